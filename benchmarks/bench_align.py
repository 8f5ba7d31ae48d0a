"""Align with heat map on a 2048 x 2048 image, beside the naive pass that embeds all 144 overlapping
224-px tiles in fp32, with a ViT-B/32-size CLIP (random weights: the speed is the real one's).

    python benchmarks/bench_align.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.common import save, table  # noqa: E402


def naive_all_tiles(encoder, image) -> float:
    """Every 224-px tile at 25 % overlap (144 for 2048^2) through the processor and the model, fp32."""
    from crossmodal.alignment.align import tile_boxes

    tiles = tile_boxes(*image.size, 224, 0.25)
    assert len(tiles) == 144
    started = time.perf_counter()
    encoder.encode_images([image.crop(b) for b in tiles], batch_size=32)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import os

    from crossmodal.alignment.align import align
    from crossmodal.encoders.models import load_encoder

    os.environ.setdefault("CROSSMODAL_ONNX_CACHE", str(Path(tempfile.gettempdir()) / "crossmodal-bench-onnx"))
    from crossmodal.lab.scenes import generate_scene

    image = generate_scene(42, 2048, 2048, 2, size_range=(0.04, 0.05)).image
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_vit_b32(Path(tmp) / "vit-b32")
        encoder = load_encoder(str(model_dir), "cpu")
        naive_all_tiles(encoder, image)  # warm-up
        naive = statistics.median(naive_all_tiles(encoder, image) for _ in range(max(1, args.repeat // 2)))
        rows.append({"pass": "naive: 144 tiles of 224 px, fp32", "ms": round(naive * 1000), "speedup": 1.0})
        for precision in ("fp32", "bf16", "int8"):
            used = encoder.use_precision(precision)
            align(encoder, image, "a red circle and a blue star")  # warm-up
            runs = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                result = align(encoder, image, "a red circle and a blue star")
                runs.append(time.perf_counter() - started)
            seconds = statistics.median(runs)
            rows.append({"pass": f"align, heat map, tiled ({result['tiles']} tiles + global + refinement), {used}",
                         "ms": round(seconds * 1000), "speedup": round(naive / seconds, 2),
                         "phases_ms": result["timings_ms"], "agreement": encoder.precision_agreement})
    print(table(rows, ["pass", "ms", "speedup"]))
    out = {"image": "2048x2048 PNG scene, two phrases", "model": "ViT-B/32 CLIP (random weights)", "rows": rows}
    print(f"saved {save('align', out)}")
    return out


if __name__ == "__main__":
    main()
