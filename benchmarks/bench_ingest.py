"""End-to-end ingest benchmark: JPEG files on disk -> decoded -> embedded -> stored points, with a
ViT-B/32-size CLIP (random weights: the speed is the same as the real one's), fp32, this machine.

    python benchmarks/bench_ingest.py [--images 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, timed  # noqa: E402


def save_vit_b32(directory: Path) -> Path:
    """openai/clip-vit-base-patch32's architecture and preprocessing, random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from crossmodal.scenes import vocabulary_texts
    from crossmodal.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(vocabulary_texts(), context_length=77)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(patch_size=32), projection_dim=512)
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def write_jpegs(directory: Path, n: int) -> list[Path]:
    from crossmodal.scenes import generate_scene

    paths = []
    for k in range(n):
        path = directory / f"img{k:05d}.jpg"
        generate_scene(10_000 + k, 1024, 768).image.save(path, quality=90)
        paths.append(path)
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args(argv)

    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_vit_b32(tmp / "vit-b32")
        (tmp / "jpegs").mkdir()
        paths = write_jpegs(tmp / "jpegs", args.images)
        service = Service(Settings(data_dir=str(tmp / "store"), model=str(model_dir), device="cpu"))
        service.encoder()  # load outside the timing
        items = [IngestItem(image=ImageInput.from_path(p)) for p in paths]
        report, seconds = timed(service.ingest, items, "bench")
        assert report["added"] == args.images
        service.store.close()
    result = {"images": args.images, "image_size": "1024x768 JPEG", "model": "ViT-B/32 CLIP (random weights)",
              "precision": "fp32", "seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 1)}
    print(f"ingest end to end: {result['images_per_s']} images/s ({args.images} JPEGs 1024x768, "
          f"ViT-B/32 fp32, {seconds:.1f} s)")
    print(f"saved {save('ingest', result)}")
    return result


if __name__ == "__main__":
    main()
