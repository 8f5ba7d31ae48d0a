"""Qwen3-VL-Embedding-2B at its real size (random weights: speed needs no training) through the production path:
images per second and text-query latency, each set against the machine's matmul limit for the FLOPs it ran
(counted by torch's FlopCounterMode), with CLIP ViT-B/32's text query (random weights) measured beside it.

The model is built here (Qwen3-VL-2B's tower sizes, crossmodal/lab/vlm_models.py), saved in bf16 and loaded as
the pack loads it (fp32 on a CPU, bf16 on a GPU). Needs torchvision built for the installed torch.

    python benchmarks/bench_vlm.py [--images 4] [--queries 10] [--side 448] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, matmul_peak_gflops, save, table  # noqa: E402


def counted_flops(fn) -> float:
    """FLOPs of one call (matrix products and attention), as torch counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def query_latencies(encoder, count: int) -> list[float]:
    """Seconds per text query vector, one query at a time (distinct texts: nothing is cached)."""
    encoder.query_text_vector("a warm-up query")
    runs = []
    for k in range(count):
        started = time.perf_counter()
        encoder.query_text_vector(f"a red circle beside a blue star, number {k}")
        runs.append(time.perf_counter() - started)
    return runs


def synchronise(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def measure(args, directory: Path) -> tuple[list[dict], dict]:
    import torch

    from benchmarks.bench_ingest import save_vit_b32
    from crossmodal.encoders.models import get_encoder
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.lab.vlm_models import save_qwen3_vl_embedding

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    started = time.perf_counter()
    model_dir = save_qwen3_vl_embedding(directory / "qwen3-vl-embedding-2b", size="2b", dtype="bfloat16",
                                        max_pixels=args.side * args.side)
    built = time.perf_counter() - started
    started = time.perf_counter()
    encoder = get_encoder(str(model_dir), args.device, precision="bf16" if args.device == "cuda" else "fp32")
    loaded = time.perf_counter() - started
    peak = matmul_peak_gflops(dtype, n=8192 if args.device == "cuda" else 2048, device=args.device)
    images = [generate_scene(900 + k, args.side, args.side, 2).image for k in range(args.images)]

    image_flops = counted_flops(lambda: encoder.encode_images(images[:1]))
    query_flops = counted_flops(lambda: encoder.encode_texts(["a red circle beside a blue star, number 0"],
                                                             input_type="query"))
    encoder.encode_images(images[:1])  # warm-up
    synchronise(args.device)
    started = time.perf_counter()
    encoder.encode_images(images)
    synchronise(args.device)
    image_seconds = (time.perf_counter() - started) / len(images)
    vlm_queries = query_latencies(encoder, args.queries)
    clip = get_encoder(str(save_vit_b32(directory / "vit-b32")), args.device)
    clip_queries = query_latencies(clip, args.queries)

    p50 = statistics.median(vlm_queries)
    rows = [
        {"measure": f"Qwen3-VL-Embedding-2B image, {args.side}x{args.side} ({encoder.visual_tokens(args.side, args.side)} "
                    "visual tokens)", "value": round(1 / image_seconds, 3), "unit": "images/s",
         "gflop": round(image_flops / 1e9, 1), "vs_limit": round(image_flops / image_seconds / (peak * 1e9), 2)},
        {"measure": "Qwen3-VL-Embedding-2B text query p50", "value": round(1000 * p50, 1), "unit": "ms",
         "gflop": round(query_flops / 1e9, 1), "vs_limit": round(query_flops / p50 / (peak * 1e9), 2)},
        {"measure": "CLIP ViT-B/32 text query p50 (same run)", "value": round(1000 * statistics.median(clip_queries), 2),
         "unit": "ms"},
    ]
    facts = {"device": args.device, "precision": encoder.precision, "matmul_limit_gflops": round(peak, 1),
             "build_s": round(built, 1), "load_s": round(loaded, 1), "dimension": encoder.dim,
             "parameters_m": round(sum(p.numel() for p in encoder.model.parameters()) / 1e6),
             "query_p95_ms": round(1000 * sorted(vlm_queries)[int(0.95 * (len(vlm_queries) - 1))], 1)}
    return rows, facts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (also the model's max_pixels)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        print(f"torchvision is not usable here ({type(exc).__name__}): the Qwen3-VL processor needs it; run this "
              "with the Python 3.12 environment")
        return {"skipped": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        rows, facts = measure(args, Path(tmp))
    print(table(rows, ["measure", "value", "unit", "gflop", "vs_limit"]))
    print(facts)
    out = {"rows": rows, **facts, "machine": machine()}
    print(f"saved {save('vlm' if args.device == 'cpu' else 'vlm-gpu', out)}")
    return out


if __name__ == "__main__":
    main()
