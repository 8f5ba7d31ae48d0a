"""OCR (crossmodal/ocr): pages per second on 144-dpi A4 pages of 25-40 lines against rapidocr-onnxruntime's
default settings in the same run (the reference: the same PP-OCRv4 models through rapidocr's own code, imported
here only), detection and recognition each against this CPU's matmul limit for the FLOPs they ran; character
accuracy on rendered English and Chinese lines by font and size and on scanned pages and screenshots; the share
of English word boundaries recovered; the text gate of ``ocr=auto`` (detection alone) on photos without text; and
the memory a process's OCR grows by, with the sessions' shared arena against one arena per session and against
rapidocr's defaults (each in a fresh process).

    python benchmarks/bench_ocr.py [--pages 2] [--repeats 3] [--lines 48] [--threads N] [--quick]
    python benchmarks/bench_ocr.py --memory

Data is generated (crossmodal/lab/scans.py; Debian's DejaVu and Noto CJK fonts). FLOPs are counted from the ONNX
graphs at the shapes each stage ran (convolutions and matrix products, after ONNX Runtime's symbolic shape
inference); the limit is torch's fp32 matrix product on the same threads (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import matmul_peak_gflops, save, table  # noqa: E402

LINE_SIZES = (16, 20, 28, 40)  # font pixel sizes of the rendered lines: line heights of 19 px and up
GATE_SIDE = 640  # the detection size measured for the ocr=auto gate


def bgr(image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


# FLOPs of the ONNX graphs at given input shapes.

@functools.lru_cache(maxsize=None)
def graph_gflop(kind: str, shape: tuple[int, ...]) -> float:
    """Convolution, transposed convolution and matrix-product FLOPs of one shipped graph at one input shape."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from crossmodal.ocr.models import MODEL_FILES, model_directory

    model = onnx.load(str(model_directory() / MODEL_FILES[kind]))
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            total += 2 * np.prod(shapes[node.output[0]]) * np.prod(shapes[node.input[1]][1:])
        elif node.op_type == "ConvTranspose":
            weight = shapes[node.input[1]]  # in, out / group, kh, kw
            total += 2 * np.prod(shapes[node.input[0]]) * np.prod(weight[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            total += 2 * np.prod(shapes[node.output[0]]) * shapes[node.input[0]][-1]
    return total / 1e9


def recognition_gflop(widths: list[int], minimum: int) -> float:
    """The recognizer's work on crops of these widths, batched as crossmodal/ocr/recognition.py batches them."""
    from crossmodal.ocr import recognition

    total = 0.0
    for group in recognition.batches(widths, minimum):
        padded = max(minimum, max(widths[i] for i in group))
        total += len(group) * graph_gflop("recognition", (1, 3, recognition.HEIGHT, padded))
    return total


# Throughput against rapidocr's defaults.

def throughput(args, pages, reference) -> tuple[list[dict], dict]:
    from crossmodal.ocr import detection, read_text, recognition

    ours = {"total": [], "detection": [], "direction": [], "recognition": []}
    theirs = {"total": [], "detection": [], "direction": [], "recognition": []}
    for page in pages:  # warm both (sessions, arenas)
        read_text(page.image)
        reference(bgr(page.image))
    for _ in range(args.repeats):
        for page in pages:  # interleaved, so that a neighbour's load falls on both alike
            started = time.perf_counter()
            result = read_text(page.image)
            ours["total"].append(time.perf_counter() - started)
            for stage in ("detection", "direction", "recognition"):
                ours[stage].append(result.seconds[stage])
            pixels = bgr(page.image)
            started = time.perf_counter()
            _, stages = reference(pixels)
            theirs["total"].append(time.perf_counter() - started)
            for stage, seconds in zip(("detection", "direction", "recognition"), stages):
                theirs[stage].append(seconds)
    median = {side: {k: statistics.median(v) for k, v in runs.items()} for side, runs in (("ours", ours), ("theirs", theirs))}

    # The work each stage did on one page: detection's input after resizing, recognition's batches.
    page = pages[0]
    ours_det_input, _ = detection.network_input(bgr(page.image), detection.MAX_SIDE)
    det_gflop = graph_gflop("detection", tuple(ours_det_input.shape))
    lines = detection.detect(bgr(page.image))
    widths = [recognition.crop_line(page.image.convert("RGB"), line.box).width for line in lines]
    rec_gflop = recognition_gflop(widths, recognition.MIN_WIDTH)
    reference_det_shape = (1, 3, *(round(s / 32) * 32 for s in page.image.size[::-1]))  # rapidocr: no resize here
    reference_det_gflop = graph_gflop("detection", reference_det_shape)
    peak = matmul_peak_gflops()

    def row(name, side, stage, gflop=None):
        seconds = median[side][stage]
        out = {"measure": name, "seconds": round(seconds, 3)}
        if stage == "total":
            out["pages_per_s"] = round(1 / seconds, 3)
        if gflop is not None:
            out["gflop"] = round(gflop, 1)
            out["vs_limit"] = round(gflop / seconds / peak, 3)
        return out

    rows = [
        row("crossmodal.ocr page", "ours", "total"),
        row("rapidocr defaults page", "theirs", "total"),
        row("crossmodal.ocr detection", "ours", "detection", det_gflop),
        row("rapidocr detection", "theirs", "detection", reference_det_gflop),
        row("crossmodal.ocr direction", "ours", "direction"),
        row("rapidocr direction", "theirs", "direction"),
        row("crossmodal.ocr recognition", "ours", "recognition", rec_gflop),
        row("rapidocr recognition", "theirs", "recognition"),
    ]
    facts = {"speedup_vs_rapidocr": round(median["theirs"]["total"] / median["ours"]["total"], 2),
             "recognition_speedup": round(median["theirs"]["recognition"] / median["ours"]["recognition"], 2),
             "detection_speedup": round(median["theirs"]["detection"] / median["ours"]["detection"], 2),
             "matmul_limit_gflops": round(peak, 1), "page_lines": [len(p.lines) for p in pages],
             "detection_input": list(ours_det_input.shape), "reference_detection_input": list(reference_det_shape),
             "recognition_columns": int(sum(widths))}
    return rows, facts


# Quality.

def quality(args, reference) -> tuple[list[dict], dict]:
    from crossmodal.lab import scans
    from crossmodal.ocr import read_text

    def ours(image):
        return [(line.text, line.box) for line in read_text(image).lines]

    def theirs(image):
        found, _ = reference(bgr(image))
        return [(text, box) for box, text, _ in (found or [])]

    groups: dict[str, list] = {}
    lines = {language: scans.line_set(max(1, args.lines // 2), language, seed=11, sizes=LINE_SIZES)
             for language in ("en", "zh")}
    for language, pictures in lines.items():
        for picture in pictures:
            groups.setdefault(f"line {language} {picture.meta['font']}", []).append(picture)
            groups.setdefault(f"line {language} {picture.meta['size']}px", []).append(picture)
    groups["page en (scan)"] = [scans.scanned_page(70 + k, "en") for k in range(args.pages)]
    groups["page zh (scan)"] = [scans.scanned_page(80 + k, "zh") for k in range(args.pages)]
    groups["page mixed (scan)"] = [scans.scanned_page(90 + k, "mixed") for k in range(args.pages)]
    groups["screenshot"] = [scans.screenshot(100 + k) for k in range(args.pages)]

    readings: dict[tuple[str, int], list] = {}  # each picture read once per reader, whatever groups it is in

    def scores(side, reader, pictures) -> tuple[int, int, int, int, int]:
        totals = [0, 0, 0, 0, 0]  # edits, characters, words kept, words, spurious spaces
        for picture in pictures:
            key = (side, id(picture))
            if key not in readings:
                readings[key] = reader(picture.image)
            counts = (*scans.page_errors(picture.lines, readings[key]),
                      *scans.page_word_boundaries(picture.lines, readings[key]))
            totals = [a + b for a, b in zip(totals, counts)]
        return tuple(totals)

    rows = []
    for name, pictures in groups.items():
        row = {"set": name, "pictures": len(pictures)}
        for side, reader in (("ours", ours), ("theirs", theirs)):
            edits, characters, kept, words, _ = scores(side, reader, pictures)
            row[f"{side}_accuracy"] = round(1 - edits / max(1, characters), 4)
            if words:
                row[f"{side}_words"] = round(kept / words, 4)
        rows.append(row)
    facts = {}
    for side, reader in (("ours", ours), ("theirs", theirs)):
        for language, pictures in lines.items():
            edits, characters, kept, words, spurious = scores(side, reader, pictures)
            facts[f"{side}_line_accuracy_{language}"] = round(1 - edits / max(1, characters), 4)
            if language == "en":
                facts[f"{side}_line_word_boundaries"] = round(kept / max(1, words), 4)
                facts[f"{side}_line_spurious_spaces"] = spurious
        pages = [p for name, pictures in groups.items() if not name.startswith("line") for p in pictures]
        edits, characters, kept, words, spurious = scores(side, reader, pages)
        facts[f"{side}_page_accuracy"] = round(1 - edits / max(1, characters), 4)
        facts[f"{side}_page_word_boundaries"] = round(kept / max(1, words), 4)
    return rows, facts


def text_gate(args) -> dict:
    """Detection alone on photos without text (time, false alarms) and on pictures with text (found or not)."""
    from crossmodal.lab import scans
    from crossmodal.ocr import detection, find_text_lines

    photos = [scans.photo_like(200 + k).image for k in range(args.photos)]
    texts = [scans.screenshot(300 + k).image for k in range(3)] + [scans.scanned_page(310 + k).image for k in range(2)]
    out = {}
    for side in (GATE_SIDE, detection.MAX_SIDE):
        find_text_lines(photos[0], max_side=side)
        started = time.perf_counter()
        alarms = sum(1 for photo in photos if find_text_lines(photo, max_side=side))
        out[f"photo_seconds_at_{side}"] = round((time.perf_counter() - started) / len(photos), 3)
        out[f"photos_with_boxes_at_{side}"] = f"{alarms}/{len(photos)}"
        out[f"text_pictures_found_at_{side}"] = f"{sum(1 for t in texts if find_text_lines(t, max_side=side))}/{len(texts)}"
    out["photo_size"] = list(photos[0].size)
    return out


MEMORY_CHILD = """
import resource, sys, time
from crossmodal.lab import scans
pictures = [scans.scanned_page(k).image for k in range(4)] + [scans.screenshot(k).image for k in range(4)]
setup = sys.argv[1]
if setup == "rapidocr":
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR()
    read = lambda picture: engine(np.asarray(picture.convert("RGB"))[:, :, ::-1])
else:
    from crossmodal.ocr import models
    from crossmodal.ocr.reader import read_text
    models._models = models._make_models(models.model_directory(), models.default_threads(),
                                         shared_arena=setup == "shared")
    read = read_text
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
read(pictures[0])
started = time.perf_counter()
for picture in pictures * 2:
    read(picture)
print(round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024),
      round((time.perf_counter() - started) / (2 * len(pictures)), 3))
"""


def memory() -> list[dict]:
    """Peak growth of a fresh process reading four scanned pages and four screenshots twice, per setup."""
    import subprocess

    rows = []
    for setup, what in (("shared", "ours: one arena for the three sessions (shipped)"),
                        ("own", "ours: an arena per session"), ("rapidocr", "rapidocr's defaults (no arena)")):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, setup], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=1800, check=True)
        growth, seconds = out.stdout.split()[-2:]
        rows.append({"setup": what, "growth_mb": int(growth), "seconds_per_picture": float(seconds)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2, help="pages timed, and pages per quality set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lines", type=int, default=48, help="rendered lines for character accuracy")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="threads for both readers and the limit")
    parser.add_argument("--quick", action="store_true", help="one page, one repeat, 12 lines, 5 photos")
    parser.add_argument("--memory", action="store_true", help="only the memory of each arena setup")
    args = parser.parse_args(argv)
    if args.memory:
        rows = memory()
        print(table(rows, ["setup", "growth_mb", "seconds_per_picture"]))
        out = {"memory": rows, "load_average": os.getloadavg()}
        print(f"saved {save('ocr-memory', out)}")
        return out
    if args.quick:
        args.pages, args.repeats, args.lines, args.photos = 1, 1, 12, 5
    if args.threads:
        os.environ["CROSSMODAL_OCR_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    from crossmodal.lab import scans
    from crossmodal.ocr.models import load_models

    if not scans.fonts_available():
        print(f"fonts missing: apt-get install {scans.FONT_PACKAGES}")
        return {"skipped": "fonts"}
    from rapidocr_onnxruntime import RapidOCR  # the reference, here only

    threads = load_models().threads
    reference = RapidOCR(intra_op_num_threads=args.threads) if args.threads else RapidOCR()
    pages = [scans.scanned_page(50 + k, ("en", "mixed")[k % 2]) for k in range(args.pages)]
    speed_rows, speed = throughput(args, pages, reference)
    print(table(speed_rows, ["measure", "seconds", "pages_per_s", "gflop", "vs_limit"]))
    print(speed)
    quality_rows, accuracy = quality(args, reference)
    print(table(quality_rows, ["set", "pictures", "ours_accuracy", "theirs_accuracy", "ours_words", "theirs_words"]))
    print(accuracy)
    gate = text_gate(args)
    print(gate)
    out = {"speed": speed_rows, **speed, "quality": quality_rows, **accuracy, "gate": gate, "ocr_threads": threads,
           "load_average": os.getloadavg()}
    print(f"saved {save('ocr', out)}")
    return out


if __name__ == "__main__":
    main()
