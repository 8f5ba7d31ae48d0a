"""PDF pages through Ingest with the bundled demo model: a 100-page PDF rendered (PDFium, 144 dpi), embedded and
stored, against rendering alone (PDFium runs one page at a time: its limit here) in the same run.

    python benchmarks/bench_documents.py [--pages 100] [--dpi 144]
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
    print(table(rows, ["measure", "value", "unit", "vs_render", "target"]))
    out = {"rows": rows, "pages": args.pages, "dpi": args.dpi}
    print(f"saved {save('documents', out)}")
    return out


if __name__ == "__main__":
    main()
