"""The laboratory and packaging subcommands (calibrate, train, average, eval, demo, package, keygen, export), kept apart
from the store stages in cli.py, which adds STAGES to its table."""

from __future__ import annotations

import json
import sys


def cmd_train(args) -> int:
    from crossmodal.lab.training import TrainConfig, train

    config = TrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup=args.warmup, seed=args.seed, scenes=args.scenes, init=args.init,
                         pairs=args.pairs, bf16=not args.fp32,
                         save_every=args.save_every, patch_size=args.patch_size,
                         image_size=args.image_size, crops=not args.no_crops,
                         vision_layers=args.vision_layers, text_mlp=args.text_mlp,
                         shape_negatives=args.shape_negatives, mine_negatives=args.mine_negatives,
                         shape_crops=args.shape_crops, scene_side=args.scene_side)

    def progress(step, loss):
        print(f"step {step}/{config.steps} loss {loss:.4f}", file=sys.stderr)

    report = train(config, progress)
    print(json.dumps({"out": args.out, "steps": report.steps, "seconds": report.seconds,
                      "final_loss": round(report.final_loss, 4), "pairs": report.pairs, "skipped": report.skipped,
                      "skip_reasons": report.skip_reasons}, ensure_ascii=False))
    return 0


def cmd_average(args) -> int:
    from crossmodal.lab.training import average_checkpoints

    out = average_checkpoints(args.checkpoints, args.out)
    print(json.dumps({"out": str(out), "averaged": args.checkpoints}, ensure_ascii=False))
    return 0


def cmd_eval(args) -> int:
    from crossmodal.lab.evaluation import run_eval

    sets = tuple(args.sets.split(",")) if args.sets else ("single_en", "single_zh", "double_en", "double_zh")
    report = run_eval(args.model, n=args.n, pairs=args.pairs, out=args.out, sets=sets, pointing_n=args.pointing_n,
                      small_n=args.small_n, rerank_n=args.rerank_n,
                      rerank_gallery=args.rerank_gallery)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_calibrate(args) -> int:
    from crossmodal.alignment.calibration import calibration_path
    from crossmodal.lab.calibration_fit import (fit_calibration, labelled_jsonl_pairs, labelled_scene_pairs,
                                                save_calibration)
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.settings import default_data_dir

    encoder = load_encoder(model_identity(args.model), "cpu")
    if args.pairs:
        pairs, source = labelled_jsonl_pairs(args.pairs, args.seed), f"fit on pairs from {args.pairs}"
    else:
        pairs = labelled_scene_pairs(args.n, CALIBRATION_SEED + args.seed)
        source = f"Platt fit on {args.n} generated scenes (one true, one false caption each)"
    calibration = fit_calibration(encoder, pairs, source, args.seed)
    out = args.out or calibration_path(encoder.identity, args.store or default_data_dir())
    save_calibration(calibration, out)
    print(json.dumps({"out": str(out), "a": round(calibration.a, 4), "b": round(calibration.b, 4),
                      "metrics": calibration.metrics}, ensure_ascii=False))
    return 0


CALIBRATION_SEED = 600_000_000  # generated scenes never used in training or evaluation


def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="fit the align node's match probability (Platt scaling) for a model")
    p.add_argument("--model", default="demo-shapes")
    p.add_argument("--n", type=int, default=1000, help="generated scenes (without --pairs)")
    p.add_argument("--pairs", help='JSONL of {"image": path, "caption": text}: true pairs; false ones are drawn')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="file to write (default: DATA_DIR/calibration/MODEL.json)")
    p.add_argument("--store", metavar="DIR", help="data directory (default $CROSSMODAL_HOME or ~/.crossmodal)")


def cmd_demo(args) -> int:
    from crossmodal.lab.demo import format_table, run_demo

    summary = run_demo(model=args.model, store=args.store, collection=args.collection, out=args.out,
                       pictures=args.pictures)
    if args.json:
        for row in summary["queries"]:
            for hit in row["hits"]:
                hit.pop("thumbnail", None)
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(format_table(summary))
    return 0


def _add_train(sub):
    from dataclasses import fields

    try:
        from crossmodal.lab.training import MIN_SCENE_SIDE, TrainConfig  # light: torch loads when training starts
    except ImportError:  # the lean build ships no laboratory: `train` answers with needs_torch's error
        sub.add_parser("train", help="contrastive training (the full package only)")
        return
    default = {f.name: f.default for f in fields(TrainConfig)}  # one source for the defaults
    p = sub.add_parser("train", help="contrastive (InfoNCE) training: the demo model or fine-tuning on your pairs")
    p.add_argument("--out", required=True, help="directory for the checkpoint (save_pretrained format)")
    p.add_argument("--init", help="checkpoint to fine-tune (preset, hub id or directory); default: a new demo model")
    p.add_argument("--pairs", help='JSONL of {"image": path, "caption": text}; default: generated scenes')
    p.add_argument("--steps", type=int, default=default["steps"])
    p.add_argument("--batch-size", type=int, default=default["batch_size"])
    p.add_argument("--lr", type=float, default=default["lr"])
    p.add_argument("--warmup", type=int, default=default["warmup"], help="steps of linear learning-rate warm-up")
    p.add_argument("--scenes", type=int, default=default["scenes"], help="generated scenes (without --pairs)")
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--save-every", type=int, default=default["save_every"])
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--patch-size", type=int, help="with --init: re-cut the vision tower into finer patches (16 -> 8)")
    p.add_argument("--image-size", type=int, help="with --init: show the vision tower larger images (128 -> 160)")
    p.add_argument("--vision-layers", type=int,
                   help="with --init: deepen the vision tower to N layers (new layers start as identity)")
    p.add_argument("--text-mlp", type=int,
                   help="with --init: keep N hidden units in each text MLP (the most used), e.g. to pay for "
                        "a vision layer within a size cap")
    p.add_argument("--no-crops", action="store_true", help="generated scenes only, no tile-sized crops")
    p.add_argument("--scene-side", type=int, default=default["scene_side"],
                   help="generated scenes: the largest side, in px, before downscaling to the model input "
                        f"(scenes are {MIN_SCENE_SIDE}..N; the evaluation sets are 224..512)")
    p.add_argument("--shape-crops", type=int, default=default["shape_crops"],
                   help="generated scenes: also train on N object windows a step, cut at the scenes' own scale and "
                        "scored against every colour-shape phrase (about a quarter of a scene's cost each)")
    p.add_argument("--shape-negatives", action="store_true",
                   help="generated scenes: add each caption with one shape changed as a hard negative")
    p.add_argument("--mine-negatives", action="store_true",
                   help="generated scenes: like --shape-negatives, but of each caption's one-shape swaps add the "
                        "one the model puts closest to the image, not a random one")


def _add_average(sub):
    p = sub.add_parser("average", help="uniform weight average of checkpoints fine-tuned from one start (model soup)")
    p.add_argument("checkpoints", nargs="+", help="presets, hub ids or directories of the same architecture")
    p.add_argument("--out", required=True, help="directory for the averaged checkpoint (fp16)")


def _add_eval(sub):
    p = sub.add_parser("eval", help="Recall@K and latency through the store; JSON report and PNG chart")
    p.add_argument("--model", default="demo-shapes")
    p.add_argument("--n", type=int, default=1000, help="generated scenes per set")
    p.add_argument("--sets", help="comma-separated: single_en,single_zh,double_en,double_zh")
    p.add_argument("--pairs", help="JSONL of (image, caption) pairs instead of generated scenes")
    p.add_argument("--out", default="reports", help="directory for eval.json and eval.png")
    p.add_argument("--pointing-n", type=int, default=500, help="scenes per pointing-game set (512 px; 0: skip)")
    p.add_argument("--small-n", type=int, default=200, help="2048-px small-object scenes (0: skip)")
    p.add_argument("--rerank-n", type=int, default=100, help="two-object queries for region reranking (0: skip)")
    p.add_argument("--rerank-gallery", type=int, default=1000, help="two-object scenes the reranked queries search")


def _add_demo(sub):
    p = sub.add_parser("demo", help="offline end-to-end demo: gallery -> store -> English/Chinese search")
    p.add_argument("--model", default="demo-shapes")
    p.add_argument("--store", help="data directory (default $CROSSMODAL_HOME or ~/.crossmodal)")
    p.add_argument("--collection", default="demo")
    p.add_argument("--out", default="crossmodal-demo.html")
    p.add_argument("--pictures", metavar="DIR", help="also write align.png and search.png (the README's pictures)")
    p.add_argument("--json", action="store_true")


def cmd_package(args) -> int:
    import zipfile

    from crossmodal.dify.packaging import build_package

    target = build_package(args.root, args.out, private_key=args.sign, category=args.category, models=args.models,
                           runtime=args.runtime)
    count = len(zipfile.ZipFile(target).namelist())
    signed = f", signed as {args.category}" if args.sign else ""
    print(f"{target} ({target.stat().st_size} bytes, {count} files{signed})")
    return 0


def _add_package(sub):
    p = sub.add_parser("package", help="build the .difypkg (honours .difyignore and .gitignore)")
    p.add_argument("--root", default=".", help="plugin folder (default: current directory)")
    p.add_argument("--out", help="output file (default: NAME-VERSION.difypkg in the folder)")
    p.add_argument("--sign", metavar="KEY.private.pem",
                   help="sign with this RSA key so that Dify's third-party signature check accepts it (see keygen)")
    p.add_argument("--category", default="community", choices=["community", "partner", "langgenius"],
                   help="the authorized category recorded in the signature")
    p.add_argument("--models", action="store_true",
                   help="the model-provider package (model_provider/ and the same core) instead of the tool package")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="torch: the full package; onnx: the lean build on ONNX Runtime alone (no torch, about a "
                        "fifth of the install; no training, BLIP ITM or GPU)")


def cmd_keygen(args) -> int:
    from crossmodal.dify.packaging import generate_key_pair

    private, public = generate_key_pair(args.name, args.bits)
    print(f"{private} (keep it secret; package --sign {private})\n{public} (give it to Dify: "
          f"THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS)")
    return 0


def _add_keygen(sub):
    p = sub.add_parser("keygen", help="make an RSA key pair for signing packages (NAME.private.pem, NAME.public.pem)")
    p.add_argument("name", help="file name prefix, e.g. crossmodal")
    p.add_argument("--bits", type=int, default=4096)


def cmd_export(args) -> int:
    from crossmodal.encoders.onnx_export import export_model

    report = export_model(args.model, args.out, int8=args.int8)
    print(json.dumps(report, ensure_ascii=False) if args.json else
          f"{report['model']} -> {report['out']} ({len(report['files'])} files{', int8' if args.int8 else ''})")
    return 0


def _add_export(sub):
    p = sub.add_parser("export", help="a model as ONNX towers in the hub's layout, for the torch-free runtime")
    p.add_argument("model", help="preset, hub id or local directory")
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--int8", action="store_true", help="dynamically quantised towers (ONNX Runtime int8)")
    p.add_argument("--json", action="store_true")


def needs_torch(command: str, function):
    """A laboratory stage: on the lean build (no torch, no crossmodal/lab/) a clear error instead of an ImportError."""

    def run(args) -> int:
        from crossmodal.engine import require_torch

        require_torch(f"'{command}'", "command", "run it where the full package is installed "
                      "(pip install -r requirements.txt)")
        return function(args)

    return run


# name -> (function, add_parser), added to cli.py's table
STAGES = {"calibrate": (needs_torch("calibrate", cmd_calibrate), _add_calibrate), "package": (cmd_package, _add_package),
          "keygen": (cmd_keygen, _add_keygen), "train": (needs_torch("train", cmd_train), _add_train),
          "average": (needs_torch("average", cmd_average), _add_average),
          "eval": (needs_torch("eval", cmd_eval), _add_eval), "demo": (needs_torch("demo", cmd_demo), _add_demo),
          "export": (needs_torch("export", cmd_export), _add_export)}
