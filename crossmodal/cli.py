"""`python -m crossmodal`: one subcommand per pipeline stage, each a thin adapter over the service.

Heavy imports (torch, transformers, qdrant) are deferred so that --help is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pdf"}  # PDFs: a point a page


def _store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("store (default: the embedded store in $CROSSMODAL_HOME or ~/.crossmodal)")
    g.add_argument("--store", metavar="DIR", help="data directory of the embedded store")
    g.add_argument("--url", help="Qdrant server or cluster URL (instead of the embedded store)")
    g.add_argument("--api-key", help="Qdrant API key (or $QDRANT_API_KEY); for migrate, the key of the server --to names")
    g.add_argument("--store-key", help="the embedded store's key (or $CROSSMODAL_STORE_KEY), as in the plugin's settings")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="preset, hub id or local directory (default: auto)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "onnx", "int8"],
                   help="bf16: autocast (fp16 on CUDA); onnx / int8: ONNX Runtime (export cached); each used when it "
                        "agrees with fp32 (mean cosine >= 0.999), else the next one (int8 -> bf16 -> fp32)")


def _service(args):
    import os

    from crossmodal.service import Service
    from crossmodal.settings import Settings

    return Service(Settings(store_url=args.url, store_api_key=args.api_key or os.environ.get("QDRANT_API_KEY"),
                            data_dir=args.store, store_key=_store_key(args), model=getattr(args, "model", None) or "auto",
                            device=getattr(args, "device", "auto"), precision=getattr(args, "precision", "fp32")))


def _store_key(args) -> str | None:
    import os

    return getattr(args, "store_key", None) or os.environ.get("CROSSMODAL_STORE_KEY") or None


def _emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False))
    else:
        print(text if text is not None else json.dumps(obj, ensure_ascii=False, indent=2))


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given; directories walked for image and PDF files, in a stable order."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)  # a missing file is reported as rejected, with the others still ingested
    return out


# -- subcommands ----------------------------------------------------------------------
def cmd_ingest(args) -> int:
    from tqdm.auto import tqdm

    from crossmodal.service import ImageInput, IngestItem

    metadata = json.loads(args.metadata) if args.metadata else {}
    if not isinstance(metadata, dict):
        raise _usage("--metadata must be a JSON object")
    tags = [t for t in (args.tags or "").split(",") if t.strip()]
    paths = expand_paths(args.paths)
    items = [IngestItem(image=ImageInput.from_path(p), tags=tags, metadata=metadata) for p in paths]
    items += [IngestItem(text=t, tags=tags, metadata=metadata) for t in args.text or []]
    if not items:
        raise _usage("give image files, directories or --text")
    bar = tqdm(total=len(items), unit="item", disable=args.json, file=sys.stderr)
    report = _service(args).ingest(items, args.collection, args.model, progress=bar.update, regions=args.regions,
                                   storage=args.storage, dpi=args.dpi, max_pages=args.max_pages, figures=args.figures,
                                   ocr=args.ocr)
    bar.close()
    summary = {"added": report["added"], "duplicates": report["duplicates"], "rejected": report["rejected"]}
    text = (f"{report['added']} added, {report['duplicates']} duplicates, {len(report['rejected'])} rejected; "
            f"'{report['collection']}' holds {report['count']} points")
    for r in report["rejected"]:
        text += f"\n  rejected {r['source']}: {r['reason']}"
    _emit(summary, args.json, text)
    return 0


def cmd_search(args) -> int:
    from crossmodal.service import ImageInput

    image = ImageInput.from_path(args.image) if args.image else None
    result = _service(args).search(
        text=args.text, image=image, collection=args.collection, top_k=args.top_k,
        score_threshold=args.score_threshold, filter=args.filter, target=args.target, model=args.model,
        text_weight=args.text_weight, regions=args.regions, rerank=args.rerank, rerank_k=args.rerank_k,
        mode=args.mode, fusion=args.fusion,
    )
    lines = [f"{'rank':>4}  {'score':>7}  source"]
    for rank, hit in enumerate(result["results"], 1):
        p = hit["payload"]
        lines.append(f"{rank:>4}  {hit['score']:>7.4f}  {p.get('source')}  {p.get('caption') or p.get('text') or ''}")
    _emit({"results": result["results"], "model": result["model"], "collection": result["collection"]}, args.json,
          "\n".join(lines))
    return 0


def cmd_embed(args) -> int:
    from crossmodal.service import ImageInput

    images = [ImageInput.from_path(p) for p in expand_paths(args.image or [])]
    result = _service(args).embed(images, args.text or [], args.model)
    _emit(result, args.json or True)
    return 0


def cmd_align(args) -> int:
    from crossmodal.service import ImageInput

    service = _service(args)
    is_url = args.image.startswith(("http://", "https://"))
    image = ImageInput.from_url(args.image, args.allow_host) if is_url else ImageInput.from_path(args.image)
    result = service.align(image, args.text, model=args.model, mode=args.mode,
                                  heatmap=not args.no_heatmap, tile_size=args.tile_size, overlap=args.overlap,
                                  overlay=bool(args.out))
    overlay = result.pop("overlay_png", None)
    if overlay:
        Path(args.out).write_bytes(overlay)
    lines = [f"similarity {result['similarity_score']:.4f}  match probability {result['match_probability']:.3f}  "
             f"({result['mode']}, {result['model']})"]
    lines += [f"  {p['text']}: {p['similarity_score']:.4f}  box {p['box']}" for p in result["phrases"]]
    lines += [f"  note: {n}" for n in result["notes"]]
    if overlay:
        lines.append(f"overlay written to {args.out} ({len(overlay)} bytes)")
    _emit(result, args.json, "\n".join(lines))
    return 0


def cmd_rerank(args) -> int:
    from crossmodal.service import ImageInput

    candidates = Path(args.candidates).read_text() if args.candidates and Path(args.candidates).is_file() else args.candidates
    files = [ImageInput.from_path(p) for p in expand_paths(args.image or [])]
    query_image = ImageInput.from_path(args.query_image) if args.query_image else None
    result = _service(args).rerank(args.query, candidates, files, query_image, args.top_n, args.method, args.model,
                                   args.collection, args.weight)
    lines = [f"{r['rank']:>3}  {r['score']:.4f}  (was #{r['first_stage_rank']})  "
             f"{r.get('text') or r['payload'].get('source') or r['id']}" for r in result["results"]]
    lines.append(f"method: {result['method']}, model: {result['model']}")
    _emit(result, args.json, "\n".join(lines))
    return 0


def cmd_serve(args) -> int:
    import os

    from crossmodal.api.server import serve

    key = os.environ.get("CROSSMODAL_API_KEY")
    if not key:
        raise _usage("set CROSSMODAL_API_KEY: every route but /viewer needs 'Authorization: Bearer <key>'")
    settings = {"api_key": key, "store_url": args.url, "store_api_key": args.api_key, "data_dir": args.store,
                "store_key": _store_key(args), "model": args.model or "auto"}
    print(f"serving http://{args.host}:{args.port}/viewer (API under /v1, OpenAPI at /openapi.json)", file=sys.stderr)
    serve(settings, args.host, args.port, args.workers, args.threads, args.timeout)
    return 0


def cmd_collections(args) -> int:
    if args.action == "migrate":
        return cmd_migrate(args)
    service = _service(args)
    if args.action == "list":
        result = service.list_collections()
        text = "\n".join(f"{c['name']}: {c['count']} points, {c['model']} ({c['dimension']}-d)"
                         for c in result["collections"]) or "no collections"
    elif args.action == "info":
        result = service.collection_info(args.name)
        text = None
    else:
        result = service.delete_collection(args.name, args.yes)
        text = f"deleted {result['deleted']}"
    _emit(result, args.json, text)
    return 0


def cmd_migrate(args) -> int:
    """Copy a collection from this command's store (--store / --url) to --to, resumably (store/migrate.py)."""
    import os

    from tqdm.auto import tqdm

    from crossmodal.locations import resolve_data_dir
    from crossmodal.store import open_store
    from crossmodal.store.migrate import migrate

    if not args.name or not args.to:
        raise _usage("collections migrate NAME --to URL|embedded[:DIR]|path:DIR [--api-key KEY] [--as NEW]")
    env_key = os.environ.get("QDRANT_API_KEY")
    target_is_server = args.to.startswith(("http://", "https://"))
    source = open_store(args.url, (env_key if target_is_server else args.api_key or env_key) if args.url else None,
                        None if args.url else resolve_data_dir(args.store, _store_key(args)))
    target = open_target(args.to, (args.api_key or env_key) if target_is_server else None)
    total = source.get_collection(args.name).count
    bar = tqdm(total=total, unit="point", disable=args.json, file=sys.stderr, desc=f"copying {args.name}")
    try:
        report = migrate(source, target, args.name, args.as_name, progress=bar.update)
    finally:
        bar.close()
        for store in (source, target):
            store.close()
    text = (f"{report['collection']} -> {report['to']}: {report['copied']} copied, {report['already_there']} "
            f"already there; {report['count']} points, {report['sampled']} sampled vectors equal")
    _emit(report, args.json, "\n".join([text, *report["notes"]]))
    return 0


def cmd_reindex(args) -> int:
    """The lexical index for a collection made before it, and text read in the pictures of its original files
    (crossmodal/ingest/reindex.py); a crash or a second run goes on where it stopped."""
    from tqdm.auto import tqdm

    from crossmodal.ingest.reindex import reindex
    from crossmodal.service import ImageInput

    service = _service(args)
    files = [ImageInput.from_path(p) for p in expand_paths(args.files)] if args.files else None
    total = service.store.get_collection(args.name).count
    bar = tqdm(total=total, unit="point", disable=args.json, file=sys.stderr, desc=f"reindexing {args.name}")
    try:
        report = reindex(service, args.name, files, ocr=args.ocr, figures=args.figures, batch=args.batch,
                         progress=bar.update)
    finally:
        bar.close()
        service.store.close()
    vectors = report["vectors"]
    text = (f"{report['collection']}: lexical vectors for {vectors['with_text']} of {vectors['points']} points "
            f"({report['lexical']}){' (resumed)' if report['resumed'] else ''}")
    if "files" in report:
        read = report["files"]
        text += (f"; {read['read']} pictures read, {read['already_read']} read before, {read['no_text']} without "
                 f"text, {read['not_in_collection']} not in the collection, {len(read['rejected'])} files rejected")
    _emit(report, args.json, text)
    return 0


def cmd_move_store(args) -> int:
    """Move a store made before store keys under a key (crossmodal/locations.py, move_store_under_key)."""
    from crossmodal.locations import data_root, move_store_under_key

    key = _store_key(args)
    if not key:
        raise _usage("give the key with --store-key or $CROSSMODAL_STORE_KEY (the value you set in Dify)")
    root = Path(args.data_root).expanduser() if args.data_root else data_root()
    report = move_store_under_key(root, args.name or "", key)
    _emit(report, args.json, f"store {report['store']} moved under its key ({len(report['collections'])} "
                             f"collections: {', '.join(report['collections']) or 'none'}); set the same key in "
                             "every workspace that uses it")
    return 0


def open_target(spec: str, api_key: str | None):
    """--to: a server URL, ``embedded`` (the default data folder) or ``embedded:DIR``, or ``path:DIR``
    (qdrant-client's local mode: a server's code path without a server)."""
    from crossmodal.store import open_store

    if spec.startswith(("http://", "https://")):
        return open_store(spec, api_key)
    if spec == "embedded" or spec.startswith("embedded:"):
        return open_store(None, None, spec.partition(":")[2] or None)
    if spec.startswith("path:") and spec[5:]:
        from qdrant_client import QdrantClient

        from crossmodal.store.remote import RemoteStore

        return RemoteStore(url=spec, client=QdrantClient(path=spec[5:]))
    raise _usage(f"--to '{spec}' is not a server URL (http[s]://...), embedded[:DIR] or path:DIR")


def _usage(message: str):
    from crossmodal.errors import CrossmodalError

    return CrossmodalError(message)


COMMANDS = {
    "ingest": cmd_ingest,
    "search": cmd_search,
    "embed": cmd_embed,
    "collections": cmd_collections,
    "align": cmd_align,
    "rerank": cmd_rerank,
    "serve": cmd_serve,
    "move-store": cmd_move_store,
    "reindex": cmd_reindex,
}


def build_parser() -> argparse.ArgumentParser:
    from crossmodal.cli_stages import STAGES  # calibrate, train, average, eval, demo, package, keygen

    parser = argparse.ArgumentParser(prog="python -m crossmodal", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="add images / texts to a collection")
    p.add_argument("paths", nargs="*", help="image or PDF files, or directories")
    p.add_argument("--text", action="append", help="a text-only item (repeatable)")
    p.add_argument("--collection", required=True)
    p.add_argument("--tags", help="comma-separated tags for every item")
    p.add_argument("--metadata", help="JSON object stored with every item")
    p.add_argument("--regions", action="store_true", help="also store tile vectors of large images")
    p.add_argument("--dpi", type=float, help="PDF pages: render resolution (default 144)")
    p.add_argument("--max-pages", type=int, help="PDF files: refuse longer ones (default 500)")
    p.add_argument("--figures", action="store_true", help="PDF files: also a point per embedded image")
    p.add_argument("--ocr", choices=("auto", "true", "false"), default="auto",
                   help="read text in pictures: auto (scanned pages, pictures that show text), true (all), false")
    p.add_argument("--storage", help="for a new collection: e.g. 'quantization=int8, on_disk=true' "
                                     "(vectors, quantization, on_disk; shards, replicas, write_consistency on a server)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a progress bar")
    _store_args(p)
    _model_args(p)

    p = sub.add_parser("search", help="search a collection by text and/or image")
    p.add_argument("text", nargs="?", help="query text")
    p.add_argument("--image", help="query image file")
    p.add_argument("--collection", required=True)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--filter", help='JSON, e.g. {"tags": ["cat"]}')
    p.add_argument("--target", default="image", choices=["image", "text", "any"])
    p.add_argument("--text-weight", type=float, default=0.5, help="share of the text in a fused query")
    p.add_argument("--regions", action="store_true", help="rank images by their best stored region too")
    p.add_argument("--rerank", choices=["auto", "cross-encoder", "itm", "region"], help="second-stage rescoring")
    p.add_argument("--rerank-k", type=int, default=20, help="first-stage hits the reranker reads")
    p.add_argument("--mode", choices=["auto", "dense", "lexical", "hybrid"],
                   help="dense (vectors), lexical (words and codes in the items' text), hybrid (both fused); "
                        "default auto: hybrid when the collection has text")
    p.add_argument("--fusion", choices=["rrf", "dbsf"], help="how hybrid fuses the two lists (default rrf)")
    p.add_argument("--json", action="store_true")
    _store_args(p)
    _model_args(p)

    p = sub.add_parser("embed", help="print vectors for images and texts as JSON")
    p.add_argument("--image", action="append", help="image file or directory (repeatable)")
    p.add_argument("--text", action="append", help="text (repeatable)")
    p.add_argument("--json", action="store_true")
    _store_args(p)
    _model_args(p)

    p = sub.add_parser("align", help="similarity, match probability and heat map of an image against a text")
    p.add_argument("image", help="image file or http(s) URL")
    p.add_argument("--allow-host", help="comma-separated internal hosts the URL may reach (default: none)")
    p.add_argument("text", help='one or several phrases ("a red circle and a blue star")')
    p.add_argument("--out", help="write the PNG overlay here")
    p.add_argument("--mode", default="auto", choices=["auto", "global", "tiled"])
    p.add_argument("--no-heatmap", action="store_true", help="scores only (faster)")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default: a quarter of the shorter side)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--json", action="store_true", help="print the result contract as JSON")
    _store_args(p)
    _model_args(p)

    p = sub.add_parser("rerank", help="rescore candidates: Search JSON, texts, or images")
    p.add_argument("query", nargs="?", help="query text")
    p.add_argument("--candidates", help="a file or string: Search --json output, a JSON list of texts, or lines")
    p.add_argument("--image", action="append", help="candidate image file or directory (repeatable)")
    p.add_argument("--query-image", help="query image (reranks text candidates by ITM)")
    p.add_argument("--method", default="auto", choices=["auto", "cross-encoder", "itm", "region"])
    p.add_argument("--top-n", type=int)
    p.add_argument("--weight", type=float, default=0.5, help="share of the second stage (itm, region)")
    p.add_argument("--collection", help="where image hits are stored (if the candidates do not say)")
    p.add_argument("--json", action="store_true")
    _store_args(p)
    _model_args(p)

    p = sub.add_parser("serve", help="the HTTP API and viewer outside Dify (key from $CROSSMODAL_API_KEY)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="worker processes (more than 1 needs a Qdrant server, --url)")
    p.add_argument("--threads", type=int, default=8, help="request threads per worker")
    p.add_argument("--timeout", type=int, default=120, help="seconds before a stuck worker is restarted")
    _store_args(p)
    p.add_argument("--model", default=None)

    p = sub.add_parser("collections", help="list, inspect, delete or migrate collections")
    p.add_argument("action", nargs="?", default="list", choices=["list", "info", "delete", "migrate"])
    p.add_argument("name", nargs="?")
    p.add_argument("--yes", action="store_true", help="confirm deletion")
    p.add_argument("--to", help="migrate: where to copy the collection (a Qdrant URL, embedded[:DIR] or path:DIR); "
                                "rerunning after an interruption goes on where it stopped")
    p.add_argument("--as", dest="as_name", metavar="NEW", help="migrate: the copy's name (default: the same)")
    p.add_argument("--json", action="store_true")
    _store_args(p)

    p = sub.add_parser("reindex", help="give a collection made before the lexical index its words and codes "
                                        "(hybrid search), and with its original files the text in their pictures; "
                                        "a crash or a second run goes on where it stopped")
    p.add_argument("name", help="the collection")
    p.add_argument("files", nargs="*", help="its original image or PDF files, or directories: matched to its points "
                                            "by content; the text in their pictures is read (the store keeps only "
                                            "384-px thumbnails, too small to read)")
    p.add_argument("--ocr", choices=("auto", "true"), default="auto",
                   help="with files: auto reads scanned pages and pictures that show text; true reads every one")
    p.add_argument("--figures", action="store_true", help="with PDF files: their figures were ingested too")
    p.add_argument("--batch", type=int, default=128, help="points written at a time")
    p.add_argument("--json", action="store_true")
    _store_args(p)

    p = sub.add_parser("move-store", help="move a store made before store keys under a key (the plugin's "
                                           "store_key setting); run it while the plugin is stopped or idle")
    p.add_argument("name", nargs="?", default="", help="the store name (data_dir in Dify; empty: the shared store)")
    p.add_argument("--store-key", help="the key (or $CROSSMODAL_STORE_KEY, which keeps it out of shell history)")
    p.add_argument("--data-root", help="the plugin's data folder (inside Dify's plugin_daemon container: "
                                       "/app/storage/crossmodal-data); default: $CROSSMODAL_HOME or ~/.crossmodal")
    p.add_argument("--json", action="store_true")

    for name, (fn, add) in STAGES.items():
        COMMANDS[name] = fn
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from crossmodal.errors import CrossmodalError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CrossmodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"error: invalid JSON argument ({exc.msg})", file=sys.stderr)
        return 2

