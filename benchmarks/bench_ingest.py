"""End-to-end ingest: JPEG files on disk -> decoded -> embedded -> stored points, with a ViT-B/32-size CLIP
(random weights: the speed is the real one's), per precision, beside the naive per-image model-card loop
and the fp32 hardware limit (matmul peak / FLOPs per image, both measured in this run).

    python benchmarks/bench_ingest.py [--images 256] [--precisions fp32,bf16,onnx,int8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import matmul_peak_gflops, save, table  # noqa: E402

AGREEMENT_SAMPLE = 32


def save_vit_b32(directory: Path) -> Path:
    """openai/clip-vit-base-patch32's architecture and preprocessing, random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from crossmodal.lab.scenes import vocabulary_texts
    from crossmodal.lab.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(vocabulary_texts(), context_length=77)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(patch_size=32), projection_dim=512)
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def write_jpegs(directory: Path, n: int, size=(1024, 768), seed: int = 10_000) -> list[Path]:
    from crossmodal.lab.scenes import generate_scene

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = directory / f"img{k:05d}.jpg"
        generate_scene(seed + k, *size).image.save(path, quality=90)
        paths.append(path)
    return paths


def image_flops(encoder) -> float:
    """FLOPs of one image through the image tower, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=encoder.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder.model.get_image_features(pixel_values=pixels)
    return float(counter.get_total_flops())


def naive_loop(model_dir: Path, paths: list[Path], store_dir: Path) -> float:
    """The model card's recipe, one image per call: open, processor, model, one store write."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from crossmodal.store import StoredPoint
    from crossmodal.store.edge import EdgeStore

    model, processor = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)
    store = EdgeStore(str(store_dir))
    store.create_collection("naive", "bench", 512)
    started = time.perf_counter()
    for k, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            out = model.get_image_features(**processor(images=image, return_tensors="pt"))
        vector = getattr(out, "pooler_output", out)[0]
        vector = vector / vector.norm()
        store.upsert("naive", [StoredPoint(f"00000000-0000-0000-0000-{k + 1:012d}", vector.tolist(), {})])
    seconds = time.perf_counter() - started
    store.close()
    return len(paths) / seconds


def pipeline_agreement(encoder, paths: list[Path], reference: np.ndarray) -> float:
    """Mean cosine between what ingest stores (draft decode, fast preprocessing, this precision) and
    fp32 embeddings through the model's own processor of the fully decoded images."""
    from crossmodal.ingest.items import prepare_item
    from crossmodal.service import ImageInput, IngestItem

    prepared = [prepare_item(IngestItem(image=ImageInput.from_path(p)), encoder.fast_preprocessor)
                for p in paths]
    pixels = encoder.fast_preprocessor.normalise([p.pixels for p in prepared])
    vectors = encoder.embed_pixels(pixels)
    return float(np.mean(np.sum(vectors * reference, axis=1)))


def cpu_line() -> str:
    """The CPU and the flags that decide ONNX Runtime's int8 kernels: int8 figures hold for that instruction set."""
    from crossmodal.encoders.int8 import cpu_flags, cpu_model, u8s8_may_saturate

    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16")
                   or f.startswith("amx"))
    kernels = "u8s8 in int16 pairs (no VNNI)" if u8s8_may_saturate() else "u8s8 in int32 (VNNI)"
    return f"{cpu_model()}, {os.cpu_count()} cores [{' '.join(flags)}]: int8 runs {kernels}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--naive-images", type=int, default=48)
    parser.add_argument("--precisions", default="fp32,bf16,onnx,int8")
    args = parser.parse_args(argv)

    from PIL import Image

    from crossmodal.encoders.models import load_encoder
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    os.environ.setdefault("CROSSMODAL_ONNX_CACHE", str(Path(tempfile.gettempdir()) / "crossmodal-bench-onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_vit_b32(tmp / "vit-b32")
        paths = write_jpegs(tmp / "jpegs", args.images)
        fp32 = load_encoder(str(model_dir), "cpu")
        flops = image_flops(fp32)
        peak = matmul_peak_gflops()
        limit = peak * 1e9 / flops
        sample = paths[:AGREEMENT_SAMPLE]
        reference = fp32.encode_images([Image.open(p).convert("RGB") for p in sample])
        rows = [{"path": "fp32 limit (matmul peak / FLOPs per image)", "images_per_s": round(limit, 1)}]
        naive = naive_loop(model_dir, paths[: args.naive_images], tmp / "naive-store")
        rows.append({"path": "naive: model-card processor + model, one image per call, fp32",
                     "images_per_s": round(naive, 1), "vs_naive": 1.0, "vs_limit": round(naive / limit, 2)})
        for precision in args.precisions.split(","):
            service = Service(Settings(data_dir=str(tmp / f"store-{precision}"), model=str(model_dir),
                                       device="cpu", precision=precision))
            encoder = service.encoder()  # loaded and checked outside the timing
            items = [IngestItem(image=ImageInput.from_path(p)) for p in paths]
            started = time.perf_counter()
            report = service.ingest(items, "bench")
            seconds = time.perf_counter() - started
            assert report["added"] == args.images, report["rejected"][:3]
            service.store.close()
            rate = args.images / seconds
            rows.append({"path": f"pipelined ingest, {encoder.precision}" + (" (fell back)" if encoder.precision
                                                                             != precision else ""),
                         "asked": precision, "images_per_s": round(rate, 1), "vs_naive": round(rate / naive, 2),
                         "vs_limit": round(rate / limit, 2),
                         "cosine_to_fp32": round(pipeline_agreement(encoder, sample, reference), 5),
                         "note": encoder.precision_note})
    print(cpu_line())
    print(table(rows, ["path", "images_per_s", "vs_naive", "vs_limit", "cosine_to_fp32"]))
    result = {"images": args.images, "image_size": "1024x768 JPEG", "model": "ViT-B/32 CLIP (random weights)",
              "cpu": cpu_line(), "gflops_per_image": round(flops / 1e9, 2), "matmul_peak_gflops": round(peak, 1),
              "decode_workers": os.environ.get("CROSSMODAL_DECODE_WORKERS", "one per core"), "rows": rows}
    print(f"saved {save('ingest', result)}")
    return result


if __name__ == "__main__":
    main()
