"""The benchmark suite's GPU check: one H100/H200-class GPU, no network, packages preinstalled, under five
minutes. fp16 and large batches: image-embedding throughput, pipelined ingest of JPEGs, align with heat map
on a 2048^2 image (the seed's target: 210 ms), text-query latency, all with a ViT-B/32-size CLIP (random
weights); then Qwen3-VL-Embedding-2B at real size (random weights) in bf16, flash attention 2 when installed:
images/s and text-query p50 against the bf16 matmul limit (benchmarks/bench_vlm.py's rows), and ColQwen2 at
its real size embedding PDF pages into token vectors (benchmarks/bench_documents.py's late row). On a machine
without a GPU it says so and exits 0.

    python benchmarks/gpu_check.py [--images 1024] [--no-vlm]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import matmul_peak_gflops, save, table  # noqa: E402

ALIGN_TARGET_MS = 210


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-vlm", action="store_true", help="skip the Qwen3-VL-Embedding-2B rows")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no GPU found (torch.cuda.is_available() is False): nothing to measure; "
              "run this on a CUDA machine (the CPU figures come from benchmarks/suite.py)")
        return {"gpu": None}

    from benchmarks.bench_ingest import image_flops, save_vit_b32, write_jpegs
    from crossmodal.alignment.align import align
    from crossmodal.encoders.models import get_encoder
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    gpu = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_vit_b32(tmp / "vit-b32")
        paths = write_jpegs(tmp / "jpegs", args.images)
        encoder = get_encoder(str(model_dir), "cuda", precision="bf16")  # fp16 autocast on CUDA
        peak = matmul_peak_gflops(torch.float16, n=8192, device="cuda")
        flops = image_flops(encoder)
        pixels = torch.randn(256, 3, 224, 224, device="cuda")
        encoder.embed_pixels(pixels, batch_size=256)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(5):
            encoder.embed_pixels(pixels, batch_size=256)
        torch.cuda.synchronize()
        rate = 5 * 256 / (time.perf_counter() - started)
        rows.append({"measure": "image tower, batch 256, fp16", "value": round(rate), "unit": "images/s",
                     "vs_limit": round(rate / (peak * 1e9 / flops), 2)})
        service = Service(Settings(data_dir=str(tmp / "store"), model=str(model_dir), device="cuda",
                                   precision="bf16"))
        started = time.perf_counter()
        report = service.ingest([IngestItem(image=ImageInput.from_path(p)) for p in paths], "gpu")
        seconds = time.perf_counter() - started
        rows.append({"measure": f"pipelined ingest of {report['added']} JPEGs 1024x768", "value":
                     round(report["added"] / seconds), "unit": "images/s"})
        image = generate_scene(42, 2048, 2048, 2, size_range=(0.04, 0.05)).image
        align(encoder, image, "a red circle and a blue star")
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            align(encoder, image, "a red circle and a blue star")
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - started)
        align_ms = 1000 * statistics.median(runs)
        rows.append({"measure": "align with heat map, 2048^2", "value": round(align_ms), "unit": "ms",
                     "target": f"<= {ALIGN_TARGET_MS}"})
        latencies = []
        for k in range(50):
            started = time.perf_counter()
            encoder.query_text_vector(f"a red circle {k}")
            latencies.append(1000 * (time.perf_counter() - started))
        rows.append({"measure": "text query vector p50", "value": round(statistics.median(latencies), 2),
                     "unit": "ms"})
    vlm = {} if args.no_vlm else vlm_rows()
    rows += vlm.get("rows", [])
    if not args.no_vlm:
        from benchmarks.bench_documents import late_pages

        for family in ("colqwen2", "colmodernvbert"):  # real sizes, bf16: pages/s
            rows.append(late_pages(family, pages=16, device="cuda"))
    print(f"GPU: {gpu}")
    print(table(rows, ["measure", "value", "unit", "vs_limit", "target"]))
    out = {"gpu": gpu, "fp16_matmul_peak_tflops": round(peak / 1000, 1), "rows": rows,
           "vlm": {k: v for k, v in vlm.items() if k != "rows"}}
    print(f"saved {save('gpu', out)}")
    return out


def vlm_rows() -> dict:
    """bench_vlm's measurement on the GPU: 16 images of 448^2 in token-budget batches, 50 queries."""
    from benchmarks.bench_vlm import measure
    from crossmodal.encoders.vlm_encoder import flash_attention_installed

    try:
        import torchvision  # noqa: F401 - the Qwen3-VL processor needs it
    except (ImportError, RuntimeError) as exc:
        return {"skipped": f"torchvision is not usable ({type(exc).__name__})"}
    with tempfile.TemporaryDirectory() as tmp:
        rows, facts = measure(argparse.Namespace(images=16, queries=50, side=448, device="cuda"), Path(tmp))
    return {"rows": rows, **facts, "flash_attention_2": flash_attention_installed()}


if __name__ == "__main__":
    main()
