"""int8 candidates on ONNX Runtime: agreement with fp32 and speed, per instruction set (issue 44).

Each model is exported once to fp32 ONNX (python -m crossmodal export's code), quantised by each candidate, and
measured against its fp32 graph: agreement (dual encoders: mean cosine of the image and of the text embeddings
on the bundled precision-check batch, the runtime's own check; cross-encoder: the largest score difference and
the correlation of logits) and speed (batch 32, best of three, candidates interleaved).
- here, with this CPU's kernels;
- with --as-avx2: again in a process that sees an AVX2 CPU without AVX-512 or VNNI (benchmarks/as_avx2.py:
  ONNX Runtime takes its AVX2 kernels, at native speed on this CPU's AVX2 units);
- with --emulate: agreement under qemu-user's Haswell, with /proc/cpuinfo edited to match (root and
  `apt-get install qemu-user`). Emulation runs minutes per image, so it takes --emulated-inputs inputs of the
  models named by --emulate-models and a few candidates, and no timings (they would measure the emulator).

    python benchmarks/bench_int8.py [--models demo,vit-b32,minilm] [--as-avx2] [--emulate]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 32
EMULATED_CPU = "Haswell"  # AVX2, FMA, no AVX-512, no VNNI
# name: how the candidate is made (int8.quantize_int8's keywords, or static QDQ) and run (precise mode).
CANDIDATES = {
    "dynamic, per channel, 8-bit (before)": {"quantize": {"weight_bits": 8}},
    "dynamic, per channel, 7-bit (now)": {"quantize": {}},
    "dynamic, per tensor, 8-bit": {"quantize": {"per_channel": False, "weight_bits": 8}},
    "dynamic, per tensor, 7-bit": {"quantize": {"per_channel": False}},
    "dynamic, u8 weights (u8u8 kernels)": {"quantize": {"weight_type": "QUInt8", "weight_bits": 8}},
    "8-bit, precise mode (always)": {"quantize": {"weight_bits": 8}, "precise": "always"},
    "8-bit, precise mode where no VNNI": {"quantize": {"weight_bits": 8}, "precise": "where needed"},
    "static QDQ, calibrated, per channel, 7-bit": {"static": True},
}
FP32 = "fp32"
# Under emulation (minutes per image): the export as it was, as it is, and the two other ways out.
EMULATED_CANDIDATES = ("dynamic, per channel, 8-bit (before)", "dynamic, per channel, 7-bit (now)",
                       "dynamic, u8 weights (u8u8 kernels)", "8-bit, precise mode where no VNNI")


# -- the models and their inputs (need torch, once) -----------------------------------------------------------
def prepare(name: str, work: Path) -> dict:
    """fp32 graphs, inputs to measure on, calibration inputs: {tower: {graph, inputs, calibration, kind}}."""
    from crossmodal.encoders.catalog import precision_check_batch
    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.lab.scenes import generate_scene, vocabulary_texts

    images, captions = precision_check_batch()
    calibration_images = [generate_scene(70_000 + k, 448, 448, 2).image for k in range(16)]
    calibration_texts = vocabulary_texts()[:32]
    out = work / name
    if name == "minilm":
        from benchmarks.bench_rerank import save_minilm_cross_encoder
        from crossmodal.rerank.onnx_cross_encoder import GRAPH, OnnxCrossEncoder

        # Wider random weights than BERT's 0.02, so that scores differ between pairs as a trained model's do.
        export_model(str(save_minilm_cross_encoder(work / "minilm-torch", initializer_range=0.1)), out)
        tokenizer = OnnxCrossEncoder(out).tokenizer
        pairs = [(q, p) for q in captions[:4] for p in captions]
        calibration = [(q, p) for q in calibration_texts[:4] for p in calibration_texts[4:12]]
        return {"cross-encoder": {"graph": out / GRAPH, "kind": "logits", "inputs": _pair_feed(tokenizer, pairs),
                                  "calibration": _pair_feed(tokenizer, calibration)}}
    from crossmodal.encoders.onnx_encoder import OnnxEncoder

    if name == "vit-b32":
        from benchmarks.bench_ingest import save_vit_b32

        model = str(save_vit_b32(work / "vit-b32-torch"))
    else:
        model = "demo-shapes"
    export_model(model, out)
    encoder = OnnxEncoder(out)
    text_feed = lambda texts: _text_feed(encoder, texts)  # noqa: E731
    return {"vision": {"graph": out / "onnx" / "vision_model.onnx", "kind": "embedding",
                       "inputs": {"pixel_values": encoder.preprocess(images)},
                       "calibration": {"pixel_values": encoder.preprocess(calibration_images)}},
            "text": {"graph": out / "onnx" / "text_model.onnx", "kind": "embedding", "inputs": text_feed(captions),
                     "calibration": text_feed(calibration_texts)}}


def _text_feed(encoder, texts: list[str]) -> dict:
    encodings = encoder.tokenizer.encode_batch(texts)
    feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64)}
    if "attention_mask" in encoder._text_inputs:
        feed["attention_mask"] = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
    return feed


def _pair_feed(tokenizer, pairs) -> dict:
    encodings = tokenizer.encode_batch(pairs)
    return {key: np.asarray([getattr(e, attr) for e in encodings], dtype=np.int64)
            for key, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                              ("token_type_ids", "type_ids"))}


def quantize(candidate: dict, fp32: Path, out: Path, calibration: dict) -> Path:
    from crossmodal.encoders.int8 import quantize_int8

    shutil.copy(fp32, out)
    if not candidate.get("static"):
        quantize_int8(out, **candidate["quantize"])
        return out
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            rows = len(next(iter(calibration.values())))
            self.feeds = iter([{k: v[i:i + 4] for k, v in calibration.items()} for i in range(0, rows, 4)])

        def get_next(self):
            return next(self.feeds, None)

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # per-axis notes about every LayerNorm weight, on the root logger
    quantize_static(str(fp32), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


# -- measuring (numpy and onnxruntime alone: this part runs under emulation) ---------------------------------
def run_graph(path: str, feed: dict, precise: str, threads: int):
    """A session (precise: never, always, or where needed: the runtime's choice by CPU) and its feed."""
    import onnxruntime as ort

    from crossmodal.encoders.int8 import PRECISE_U8S8, session_options

    if precise == "where needed":
        options = session_options(threads, fits=False)
    else:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if precise == "always":
            options.add_session_config_entry(PRECISE_U8S8, "1")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    return session, feed


def agreement(kind: str, reference: np.ndarray, trial: np.ndarray) -> dict:
    if kind == "embedding":
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
        cosines = np.sum(unit(reference) * unit(trial), axis=1)
        return {"mean_cosine": round(float(cosines.mean()), 5), "min_cosine": round(float(cosines.min()), 5)}
    sigmoid = lambda v: 1 / (1 + np.exp(-v[:, 0]))  # noqa: E731
    return {"max_score_diff": round(float(np.abs(sigmoid(reference) - sigmoid(trial)).max()), 4),
            "logit_correlation": round(float(np.corrcoef(reference[:, 0], trial[:, 0])[0, 1]), 5)}


def measure(job: dict) -> dict:
    """Every candidate graph of every tower against the fp32 outputs in job["reference"]; timings if asked."""
    inputs = np.load(job["inputs"])
    reference = np.load(job["reference"]) if job.get("reference") else None
    results, outputs, sessions = {}, {}, {}
    for tower, spec in job["towers"].items():
        feed = {k.split("/", 1)[1]: inputs[k][: job["limit"]] for k in inputs.files if k.startswith(tower + "/")}
        for candidate, graph in spec["graphs"].items():
            session, own_feed = run_graph(graph, feed, job["precise"].get(candidate, "never"), job["threads"])
            out = session.run(None, own_feed)[0]
            outputs[f"{tower}/{candidate}"] = out
            if reference is not None:
                results.setdefault(tower, {})[candidate] = agreement(spec["kind"], reference[tower][: len(out)], out)
            sessions[(tower, candidate)] = (session, own_feed)
    if job.get("timing"):
        for tower, spec in job["towers"].items():
            results.setdefault(tower, {})
            for candidate, figures in timings(spec["graphs"], tower, sessions, job.get("rounds", 3)).items():
                results[tower].setdefault(candidate, {}).update(figures)
    return {"results": results, "outputs": outputs}


def timings(graphs: dict, tower: str, sessions: dict, rounds: int) -> dict:
    """Per candidate: its best rate at batch BATCH, and its speed over fp32's as the median of each round's
    ratio (the candidates run in turn, so a neighbour's load slows both sides of a ratio alike)."""
    feed = {k: np.concatenate([v] * (BATCH // len(v) + 1))[:BATCH] for k, v in sessions[(tower, FP32)][1].items()}
    seconds = {candidate: [] for candidate in graphs}
    for _ in range(rounds):
        for candidate in graphs:
            session, _ = sessions[(tower, candidate)]
            names = {i.name for i in session.get_inputs()}
            started = time.perf_counter()
            session.run(None, {k: v for k, v in feed.items() if k in names})
            seconds[candidate].append(time.perf_counter() - started)
    return {candidate: {"per_s": round(BATCH / min(times), 1),
                        "vs_fp32": round(float(np.median(np.array(seconds[FP32]) / np.array(times))), 2)}
            for candidate, times in seconds.items()}


def run_elsewhere(job: dict, work: Path, how: str, timeout: float) -> dict:
    """measure(job) in a Python that sees another CPU: "qemu" (qemu-user's Haswell) or "avx2" (as_avx2.py)."""
    from benchmarks.as_avx2 import command_as_avx2, edited_cpuinfo

    job_file = work / f"job-{how}.json"
    job_file.write_text(json.dumps(job))
    worker = [sys.executable, __file__, "--worker", str(job_file)]
    if how == "avx2":
        command = command_as_avx2(worker, work)
    else:
        if not shutil.which("qemu-x86_64") or not shutil.which("unshare"):
            raise SystemExit("--emulate needs qemu-x86_64 (apt-get install qemu-user) and unshare")
        cpuinfo = edited_cpuinfo(work / "cpuinfo-qemu", f"qemu-x86_64 -cpu {EMULATED_CPU}")
        script = f'mount --bind "$1" /proc/cpuinfo && shift && exec qemu-x86_64 -cpu {EMULATED_CPU} "$@"'
        command = ["unshare", "-m", "sh", "-c", script, "sh", str(cpuinfo), *worker]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the {how} run failed: {done.stderr[-2000:]}")
    return json.loads(job_file.with_suffix(".out.json").read_text())


def worker(job_file: str) -> None:
    from crossmodal.encoders.int8 import cpu_model, u8s8_may_saturate

    job = json.loads(Path(job_file).read_text())
    result = measure(job)["results"]
    Path(job_file).with_suffix(".out.json").write_text(json.dumps(
        {"cpu": cpu_model(), "u8s8_may_saturate": u8s8_may_saturate(), "results": result}))


# -- the whole run ----------------------------------------------------------------------------------------------
def bench_model(name: str, work: Path, args) -> dict:
    towers = prepare(name, work)
    arrays, job_towers = {}, {}
    for tower, spec in towers.items():
        graphs = {FP32: str(spec["graph"])}
        for candidate, how in CANDIDATES.items():
            if args.candidates and not any(word in candidate for word in args.candidates.split(",")):
                continue
            path = work / f"{name}-{tower}-{len(graphs)}.onnx"
            try:
                graphs[candidate] = str(quantize(how, spec["graph"], path, spec["calibration"]))
            except Exception as exc:  # noqa: BLE001 - a candidate the quantiser refuses is a result too
                print(f"{name} {tower}: {candidate} could not be made ({type(exc).__name__}: {exc})")
        job_towers[tower] = {"kind": spec["kind"], "graphs": graphs}
        arrays.update({f"{tower}/{k}": v for k, v in spec["inputs"].items()})
    np.savez(work / f"{name}-inputs.npz", **arrays)
    precise = {c: how.get("precise", "never") for c, how in CANDIDATES.items()}
    job = {"inputs": str(work / f"{name}-inputs.npz"), "towers": job_towers, "precise": precise,
           "threads": os.cpu_count() or 1, "limit": 10_000, "rounds": args.rounds}
    fp32_only = {**job, "towers": {t: {**s, "graphs": {FP32: s["graphs"][FP32]}} for t, s in job_towers.items()}}
    reference = {key.split("/")[0]: out for key, out in measure(fp32_only)["outputs"].items()}
    np.savez(work / f"{name}-reference.npz", **reference)
    job["reference"] = str(work / f"{name}-reference.npz")
    native = measure({**job, "timing": True})["results"]
    report = {"native": native}
    if args.as_avx2:
        report["as_avx2"] = run_elsewhere({**job, "timing": True}, work, "avx2", args.timeout)
    if args.emulate and name in args.emulate_models.split(","):
        # fp32 is the reference computed here (the emulator runs fp32 slowest of all).
        emulated = {t: {**s, "graphs": {c: g for c, g in s["graphs"].items() if c in EMULATED_CANDIDATES}}
                    for t, s in job_towers.items()}
        report["emulated"] = run_elsewhere({**job, "towers": emulated, "limit": args.emulated_inputs,
                                            "threads": 1}, work, "qemu", args.timeout)
    return report


def print_tables(name: str, report: dict) -> None:
    from benchmarks.common import table

    for tower, candidates in report["native"].items():
        elsewhere = {label: report.get(key, {}).get("results", {}).get(tower, {})
                     for key, label in (("as_avx2", "avx2"), ("emulated", "qemu"))}
        rows = []
        for candidate, figures in candidates.items():
            row = {"candidate": candidate, **{k: _figure(v) for k, v in figures.items()}}
            for label, results in elsewhere.items():
                row.update({f"{label} {k}": _figure(v) for k, v in results.get(candidate, {}).items()})
            rows.append(row)
        columns = ["candidate"] + sorted({k for r in rows for k in r if k != "candidate"})
        print(f"\n{name} / {tower}")
        print(table(rows, columns))


def _figure(value) -> str:
    return f"{value:.1f}" if value > 2 else f"{value:.5f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,vit-b32,minilm")
    parser.add_argument("--candidates", help="only the candidates whose names hold one of these words (commas)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each candidate (the best counts)")
    parser.add_argument("--as-avx2", action="store_true", help="also measure as an AVX2 CPU (as_avx2.py)")
    parser.add_argument("--emulate", action="store_true", help="also measure agreement under qemu's Haswell")
    parser.add_argument("--emulate-models", default="demo,minilm")
    parser.add_argument("--emulated-inputs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds for each run elsewhere")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return {}

    from benchmarks.bench_ingest import cpu_line
    from benchmarks.common import save

    print(f"CPU: {cpu_line()}")
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            reports[name] = bench_model(name, work, args)
            print_tables(name, reports[name])
    result = {"cpu": cpu_line(), "emulated_cpu": EMULATED_CPU if args.emulate else None,
              "emulated_inputs": args.emulated_inputs, "batch": BATCH, "models": reports}
    print(f"saved {save('int8', result)}")
    return result


if __name__ == "__main__":
    main()
