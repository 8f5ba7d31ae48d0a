"""PDF pages through Ingest with the bundled demo model: a 100-page PDF rendered (PDFium, 144 dpi), embedded and
stored, against rendering alone (PDFium runs one page at a time: its limit here) in the same run; with --late,
late-interaction models of real size (random weights: ColQwen2-2B, ColModernVBert) embedding pages into token
vectors, against the matmul limit.

    python benchmarks/bench_documents.py [--pages 100] [--dpi 144] [--late [colqwen2,colmodernvbert]]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table  # noqa: E402

TARGET_PAGES_PER_S = 10


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--dpi", type=float, default=144)
    parser.add_argument("--late", nargs="?", const="colqwen2,colmodernvbert", default="",
                        help="also these late-interaction models at their real size (random weights)")
    args = parser.parse_args(argv)

    from crossmodal.inputs import pdf
    from crossmodal.lab.pdfs import text_pdf
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    document = text_pdf([f"Section {k}: figures for the quarter, with a chart" for k in range(1, args.pages + 1)])
    started = time.perf_counter()
    for number in range(1, args.pages + 1):
        pdf.render_page(document, number, args.pages, name="bench.pdf", dpi=args.dpi)
    render = args.pages / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Settings(data_dir=tmp, model="demo-shapes", device="cpu"))
        service.ingest([IngestItem(text="warm-up")], "warm")  # the model's load is not the PDF's cost
        started = time.perf_counter()
        report = service.ingest([IngestItem(image=ImageInput.from_bytes("bench.pdf", document))], "bench",
                                dpi=args.dpi)
        seconds = time.perf_counter() - started
        service.store.close()
    assert report["added"] == args.pages, report["rejected"]
    ingest = args.pages / seconds
    rows = [{"measure": f"render alone, {args.dpi:g} dpi (PDFium, one page at a time)", "value": round(render, 1),
             "unit": "pages/s"},
            {"measure": f"Ingest: render + thumbnail + embed (demo-shapes) + store, {args.pages} pages",
             "value": round(ingest, 1), "unit": "pages/s", "vs_render": round(ingest / render, 2),
             "target": f">= {TARGET_PAGES_PER_S}"}]
    for family in filter(None, args.late.split(",")):
        rows.append(late_pages(family, dpi=args.dpi))
    print(table(rows, ["measure", "value", "unit", "vs_render", "vs_limit", "target"]))
    out = {"rows": rows, "pages": args.pages, "dpi": args.dpi}
    print(f"saved {save('documents', out)}")
    return out


LATE_MODELS = {
    # ColQwen2 on Qwen2-VL-2B's towers, a page capped at 768 visual tokens (vidore's colqwen2 setting).
    "colqwen2": ("ColQwen2-2B", lambda directory: _lab().save_colqwen2(
        directory, size="2b", embedding_dim=128, max_pixels=768 * 28 * 28, dtype="bfloat16")),
    # ColModernVBert: SigLIP2-base 512-px tiles within 2,048 px (SmolVLM's processor setting) and ModernBERT-base.
    "colmodernvbert": ("ColModernVBert (250M)", lambda directory: _lab().save_colmodernvbert(
        directory, size="base", dtype="bfloat16")),
}


def _lab():
    from crossmodal.lab import late_models

    return late_models


def late_pages(family: str = "colqwen2", pages: int = 2, dpi: float = 144, device: str = "cpu") -> dict:
    """A late-interaction model at its real size (random weights) on letter pages rendered at ``dpi``: pages/s
    through the pack's encoder, and its share of the matmul limit for the FLOPs torch counts."""
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.common import matmul_peak_gflops
    from crossmodal.encoders.models import get_encoder
    from crossmodal.inputs import pdf
    from crossmodal.lab.pdfs import text_pdf

    label, build = LATE_MODELS[family]
    document = text_pdf([f"Section {k}: the quarter's figures" for k in range(1, pages + 1)])
    images = [pdf.render_page(document, k, pages, name="p.pdf", dpi=dpi).image for k in range(1, pages + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = get_encoder(str(build(Path(tmp) / family)), device)
        with FlopCounterMode(display=False) as counter:
            tokens = encoder.page_tokens(images[:1])
        started = time.perf_counter()
        encoder.page_tokens(images)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / pages
    peak = matmul_peak_gflops(torch.bfloat16 if device == "cuda" else torch.float32, device=device,
                              n=8192 if device == "cuda" else 2048)
    return {"measure": f"{label} size (random weights), a {dpi:g}-dpi letter page, {len(tokens[0])} token vectors",
            "value": round(1 / seconds, 3), "unit": "pages/s",
            "vs_limit": round(counter.get_total_flops() / seconds / (peak * 1e9), 2)}


if __name__ == "__main__":
    main()
