"""`python -m crossmodal demo`: generate a gallery, ingest it, search it in English and Chinese,
print the hits and write an HTML report. Offline with the default demo-shapes model."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from crossmodal.inputs.images import encode_png
from crossmodal.lab.scenes import article, canonical_caption, caption_specs, generate_scene, scene_satisfies

DEMO_SEED = 900_000_000
GALLERY_SIZE = 60
DEMO_COLLECTION = "demo"


def build_gallery(n: int = GALLERY_SIZE):
    return [generate_scene(DEMO_SEED + k, 256 + (k % 5) * 32, None, 1 + (k % 3 == 2)) for k in range(n)]


def demo_queries(gallery) -> list[tuple[str, list[dict]]]:
    """Queries drawn from the gallery itself (so each has an answer), in English and Chinese."""
    queries = []
    singles = [s for s in gallery if len(s.objects) == 1][:3]
    doubles = [s for s in gallery if len(s.objects) == 2][:2]
    for scene in singles:
        o = scene.objects[0]
        phrase = o.phrase("en", size=False)
        queries.append((f"{article(phrase)} {phrase}", caption_specs([o], size=False, position=False)))
    for scene in doubles:
        queries.append((canonical_caption(scene.objects, "en"), caption_specs(scene.objects, size=False, position=False)))
    for scene in singles[:2] + doubles[:1]:
        specs = caption_specs(scene.objects, size=len(scene.objects) == 1, position=len(scene.objects) == 1)
        queries.append((canonical_caption(scene.objects, "zh"), specs))
    return queries


def run_demo(model: str = "demo-shapes", store: str | None = None, collection: str = DEMO_COLLECTION,
             out: str = "crossmodal-demo.html", top_k: int = 3, pictures: str | None = None) -> dict:
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    started = time.perf_counter()
    gallery = build_gallery()
    service = Service(Settings(data_dir=store, model=model))
    items = [IngestItem(image=ImageInput.from_bytes(f"scene-{k:03d}.png", encode_png(s.image)),
                        caption=s.captions["en"][0], tags=[o.shape for o in s.objects],
                        metadata={"caption_zh": s.captions["zh"][0]})
             for k, s in enumerate(gallery)]
    note = renew_stale_demo_collection(service, collection, model)
    report = service.ingest(items, collection, model)
    objects_by_source = {f"scene-{k:03d}.png": s.objects for k, s in enumerate(gallery)}
    rows = []
    for text, specs in demo_queries(gallery):
        result = service.search(text=text, collection=collection, top_k=top_k, with_thumbnails=True)
        hits = []
        for hit in result["results"]:
            source = hit["payload"]["source"]
            hits.append({"source": source, "score": hit["score"], "caption": hit["payload"].get("caption"),
                         "correct": scene_satisfies(objects_by_source.get(source, []), specs),
                         "thumbnail": result["thumbnails"].get(hit["id"])})
        rows.append({"query": text, "hits": hits})
    summary = {"model": report["model"], "collection": collection, "added": report["added"], "note": note,
               "duplicates": report["duplicates"], "points": report["count"], "queries": rows,
               "seconds": round(time.perf_counter() - started, 1), "html": str(Path(out).resolve())}
    Path(out).write_text(render_html(summary), encoding="utf-8")
    if pictures:
        summary["pictures"] = write_pictures(service, gallery, rows, Path(pictures))
    return summary


def write_pictures(service, gallery, rows: list[dict], folder: Path) -> list[str]:
    """The README's two pictures: Align's overlay on a two-object scene, and one query's Search hits."""
    from PIL import Image, ImageDraw

    from crossmodal.inputs.sources import ImageInput

    folder.mkdir(parents=True, exist_ok=True)
    scene = next(s for s in gallery if len(s.objects) == 2)
    text = canonical_caption(scene.objects, "en")
    aligned = service.align(ImageInput.from_bytes("scene.png", encode_png(scene.image)), text)
    (folder / "align.png").write_bytes(aligned["overlay_png"])
    row = rows[0]
    side, pad, label = 160, 8, 34
    grid = Image.new("RGB", (len(row["hits"]) * (side + pad) + pad, side + label + 2 * pad + 24), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, pad), f"Search: {row['query']}", fill="black")
    for k, hit in enumerate(row["hits"]):
        thumb = Image.open(io.BytesIO(hit["thumbnail"])).convert("RGB")
        thumb.thumbnail((side, side))
        x, y = pad + k * (side + pad), pad + 24
        grid.paste(thumb, (x, y))
        draw.rectangle((x, y, x + thumb.width - 1, y + thumb.height - 1),
                       outline="#16a34a" if hit["correct"] else "#dc2626", width=3)
        draw.text((x, y + side + 4), f"{k + 1}. {hit['score']:.3f}", fill="black")
    grid.save(folder / "search.png", optimize=True)
    return [str(folder / "align.png"), str(folder / "search.png")]


def renew_stale_demo_collection(service, collection: str, model: str) -> str | None:
    """The demo's own collection, filled by earlier weights of the same model (a retrained or updated
    demo-shapes), holds vectors the new text tower cannot be compared with: it is emptied and filled again.
    Any other collection is the user's, and ingest refuses stale weights with an error instead."""
    from crossmodal.errors import NotFoundError

    if collection != DEMO_COLLECTION:
        return None
    encoder = service.encoder(model)
    try:
        info = service.store.get_collection(collection, with_count=False)
    except NotFoundError:
        return None
    if info.model != encoder.identity or info.weights == encoder.weights:
        return None
    service.store.delete_collection(collection)
    return (f"collection '{collection}' held vectors of other weights of {info.model} "
            f"({info.weights or 'unrecorded'}, now {encoder.weights}): emptied and filled again")


def format_table(summary: dict) -> str:
    lines = [f"model {summary['model']} · collection '{summary['collection']}' · {summary['added']} added, "
             f"{summary['duplicates']} duplicates, {summary['points']} points", ""]
    if summary.get("note"):
        lines[1:1] = [f"note: {summary['note']}"]
    for row in summary["queries"]:
        lines.append(f"query: {row['query']}")
        for rank, hit in enumerate(row["hits"], 1):
            mark = "✓" if hit["correct"] else "✗"
            lines.append(f"  {rank}. {mark} {hit['score']:.3f}  {hit['source']}  {hit['caption']}")
    top1 = sum(r["hits"][0]["correct"] for r in summary["queries"] if r["hits"])
    lines += ["", f"top-1 correct: {top1}/{len(summary['queries'])} · {summary['seconds']} s · "
                  f"report: {summary['html']}"]
    return "\n".join(lines)


def render_html(summary: dict) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>Crossmodal demo</title>",
             "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:4px;text-align:center}"
             "img{width:160px;border:3px solid #ccc}.ok img{border-color:#16a34a}.ko img{border-color:#dc2626}"
             "figcaption{font-size:12px;max-width:160px}</style>",
             f"<h1>Crossmodal demo</h1><p>Model <code>{html.escape(summary['model'])}</code>, "
             f"{summary['points']} points in '{html.escape(summary['collection'])}'.</p>"]
    for row in summary["queries"]:
        parts.append(f"<h2>{html.escape(row['query'])}</h2><div>")
        for hit in row["hits"]:
            cls = "ok" if hit["correct"] else "ko"
            src = base64.b64encode(hit["thumbnail"]).decode() if hit["thumbnail"] else ""
            parts.append(f"<figure class='{cls}'><img src='data:image/jpeg;base64,{src}'>"
                         f"<figcaption>{hit['score']:.3f} · {html.escape(hit['caption'] or '')}</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)

