"""PDF files as ingest items: a point per page (image, text layer, document and page), embedded figures as points
of their own, every page found by its own query, and bad files rejected with their reason while the rest of the
call goes in."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.inputs import pdf
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings
from crossmodal.lab.pdfs import picture_pdf, text_pdf


@pytest.fixture()
def service(tmp_path):
    s = Service(Settings(data_dir=str(tmp_path / "store"), model="demo-shapes", device="cpu"))
    yield s
    s.store.close()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def scenes(count: int):
    """Single-object scenes, no two alike in colour and shape."""
    from crossmodal.lab.scenes import canonical_caption, generate_scene

    found, seen, seed = [], set(), 0
    while len(found) < count:
        scene = generate_scene(5_000 + seed, 256, 256, 1)
        seed += 1
        key = (scene.objects[0].color, scene.objects[0].shape)
        if key not in seen:
            seen.add(key)
            found.append((scene.image, canonical_caption(scene.objects)))
    return found


def test_pages_are_points_with_their_document_page_and_text(service):
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("report.pdf", text_pdf(
        ["Revenue grew (a red block)", "Costs fell", "Outlook"]))), IngestItem(text="a lone text")], "docs")
    assert (report["added"], report["rejected"]) == (4, [])
    pages = [row for row in report["items"] if row["source"] == "report.pdf"]
    assert len(pages) == 3 and {row["status"] for row in pages} == {"added"}
    hits = service.search("anything", collection="docs", top_k=10)["results"]
    by_page = {h["payload"]["page"]: h["payload"] for h in hits}
    assert sorted(by_page) == [1, 2, 3]
    first = by_page[1]
    assert (first["document"], first["pages"], first["source"], first["kind"]) == ("report.pdf", 3,
                                                                                   "report.pdf#page=1", "image")
    assert first["text"] == "Revenue grew (a red block)" and first["mime_type"] == "application/pdf"
    assert (first["width"], first["height"], first["dpi"]) == (1224, 1584, 144.0)
    with_pictures = service.search("anything", collection="docs", top_k=3, with_thumbnails=True)
    thumb = Image.open(io.BytesIO(next(iter(with_pictures["thumbnails"].values()))))
    assert max(thumb.size) == 384 and thumb.size[1] > thumb.size[0]  # the page, portrait
    only_two = service.search("anything", collection="docs", filter={"document": "report.pdf", "page": {"gte": 2}})
    assert sorted(h["payload"]["page"] for h in only_two["results"]) == [2, 3]
    again = service.ingest([IngestItem(image=ImageInput.from_bytes("copy.pdf", text_pdf(
        ["Revenue grew (a red block)", "Costs fell", "Outlook"])))], "docs")
    assert (again["added"], again["duplicates"]) == (0, 3)  # a page's id is its file's content and number


def test_every_page_is_found_by_its_own_query(service):
    pages = scenes(8)
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("shapes.pdf", picture_pdf(
        [image for image, _ in pages])))], "shapes", dpi=72)
    assert report["added"] == 8
    for number, (_, caption) in enumerate(pages, start=1):
        top = service.search(caption, collection="shapes", top_k=1)["results"][0]["payload"]
        assert (top["document"], top["page"]) == ("shapes.pdf", number), caption


def test_figures_are_points_with_their_page_and_box(service):
    pictures = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (200, 300), (30, 30, 200))]
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("figs.pdf", picture_pdf(pictures)))], "figs",
                            figures=True, dpi=72)
    assert report["added"] == 4  # two pages, each with its picture as a figure
    payloads = [h["payload"] for h in service.search("anything", collection="figs", top_k=10)["results"]]
    figures = sorted((p["page"], p["figure"], tuple(p["bbox"])) for p in payloads if "figure" in p)
    assert figures == [(1, 1, (0, 0, 300, 200)), (2, 1, (0, 0, 200, 300))]
    assert {p["source"] for p in payloads if "figure" in p} == {"figs.pdf#page=1&figure=1", "figs.pdf#page=2&figure=1"}


def test_bad_pdfs_are_rejected_with_their_reason_and_the_rest_goes_in(service):
    good = text_pdf(["fine page"])
    items = [IngestItem(image=ImageInput.from_bytes("locked.pdf", text_pdf(["secret"], encrypt=True))),
             IngestItem(image=ImageInput.from_bytes("cut.pdf", good[: len(good) // 3])),
             IngestItem(image=ImageInput.from_bytes("huge.pdf", text_pdf(["p"] * 2000))),
             IngestItem(image=ImageInput.from_bytes("fine.pdf", good)),
             IngestItem(image=ImageInput.from_bytes("photo.png", png(Image.new("RGB", (64, 48), (1, 2, 3)))))]
    report = service.ingest(items, "mixed", max_pages=500)
    reasons = {r["source"]: r["reason"] for r in report["rejected"]}
    assert report["added"] == 2 and set(reasons) == {"locked.pdf", "cut.pdf", "huge.pdf"}
    assert "encrypted" in reasons["locked.pdf"] and "damaged" in reasons["cut.pdf"]
    assert "2000 pages" in reasons["huge.pdf"] and "max_pages" in reasons["huge.pdf"]


def test_options_are_checked_by_name():
    from crossmodal.ingest.documents import DocumentOptions

    assert DocumentOptions.parse(ocr="auto") == DocumentOptions(144.0, 500, False, "auto")
    for kwargs, param in (({"dpi": 10}, "dpi"), ({"dpi": "x"}, "dpi"), ({"max_pages": 0}, "max_pages"),
                          ({"max_pages": "many"}, "max_pages"), ({"ocr": "perhaps"}, "ocr")):
        with pytest.raises(CrossmodalError) as error:
            DocumentOptions.parse(**kwargs)
        assert error.value.param == param


def test_a_large_sheet_renders_within_the_pixel_budget():
    poster = text_pdf(["A0 poster"], size=(2384, 3370))  # A0 in points: 33 x 47 inches
    page = pdf.render_page(poster, 1, 1, name="poster.pdf", dpi=144)
    assert page.image.size[0] * page.image.size[1] <= pdf.MAX_PAGE_PIXELS
    assert page.dpi < 144 and "dpi" in page.notes[0]


# -- over stdio, as Dify's daemon drives the plugin ------------------------------------------------------------
@pytest.mark.protocol
def test_a_300_page_pdf_through_the_ingest_node_and_the_knowledge_api(plugin, file_server, tmp_path):
    import base64
    import json

    from stdio_harness import endpoint_request, http_response, variables

    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes"}
    long_pdf = text_pdf([f"Section {k}: quarterly figures" for k in range(1, 301)])
    report = variables(plugin.invoke_tool("ingest", {"files": [file_server("long.pdf", long_pdf)],
                                                    "collection": "manuals", "dpi": 36}, creds, timeout=300))
    assert (report.get("added"), report.get("rejected")) == (300, []) and report["count"] == 300, report
    settings = {"api_key": "k" * 16, "data_dir": creds["data_dir"], "model": "demo-shapes"}
    small = base64.b64encode(text_pdf(["Safety: wear gloves", "Storage: keep dry"])).decode()
    status, _, body = http_response(plugin.call(endpoint_request(
        settings, "POST", "/v1/ingest", {"collection": "kb", "items": [{"image": small, "source": "guide.pdf"}],
                                         "dpi": 72}, {"Authorization": f"Bearer {'k' * 16}"})))
    assert status == 200 and json.loads(body)["added"] == 2
    status, _, body = http_response(plugin.call(endpoint_request(
        settings, "POST", "/retrieval", {"knowledge_id": "kb", "query": "gloves",
                                         "retrieval_setting": {"top_k": 2, "score_threshold": 0.0}},
        {"Authorization": f"Bearer {'k' * 16}"})))
    records = json.loads(body)["records"]
    assert status == 200 and len(records) == 2
    by_page = {r["metadata"]["page"]: r for r in records}
    assert by_page[1]["content"] == "Safety: wear gloves" and by_page[2]["content"] == "Storage: keep dry"
    assert by_page[1]["title"] == "guide.pdf#page=1" and by_page[1]["metadata"]["document"] == "guide.pdf"


@pytest.mark.protocol
def test_the_pipeline_processor_makes_dify_chunks_with_uploaded_pictures(file_server):
    """Each chunk carries its page's text and its picture as a markdown image of the uploaded tool file, the form
    Dify's indexer turns into an attachment (tests/test_dify_contract.py runs Dify's indexing steps on it)."""
    from dify_side import RELEASES, DifyFiles, index_chunks
    from stdio_harness import PluginProcess, errors, variables

    dify = DifyFiles()
    plugin = PluginProcess(dify=dify.answer, heartbeat_interval=0.25)
    plugin.wait_ready()
    try:
        pictures = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (200, 300), (30, 30, 200))]
        report = text_pdf(["Revenue grew", "Costs fell", "Outlook"])
        out = variables(plugin.invoke_tool("document_chunks", {"file": file_server("report.pdf", report)}, {}))
        chunks = out["result"]["general_chunks"]
        assert [c["content"].split("\n\n")[0] for c in chunks] == ["Revenue grew", "Costs fell", "Outlook"]
        assert all(c["files"] == [] for c in chunks)
        first = index_chunks(out["result"], dify, RELEASES[-1]).embedded[0]
        assert first.name == "report-page1.jpg"
        page = Image.open(io.BytesIO(first.data))
        assert page.format == "JPEG" and page.size == (1224, 1584)

        result = variables(plugin.invoke_tool("document_chunks", {"file": file_server("figs.pdf", picture_pdf(
            pictures)), "dpi": 72}, {}))["result"]
        figures = result["general_chunks"]
        assert [c["content"].split("\n\n")[0] for c in figures] == [
            "figs.pdf, page 1 of 2", "Figure 1 on figs.pdf, page 1 of 2.", "figs.pdf, page 2 of 2",
            "Figure 1 on figs.pdf, page 2 of 2."]
        embedded = index_chunks(result, dify, RELEASES[-1]).embedded
        assert {Image.open(io.BytesIO(f.data)).size for f in embedded[1::2]} == {(300, 200), (200, 300)}
        # 300 pages: 300 uploads and one result, every stdout line within the daemon's 5 MiB.
        long_pdf = text_pdf([f"Section {k}" for k in range(1, 301)])
        many = variables(plugin.invoke_tool("document_chunks", {"file": file_server("long.pdf", long_pdf), "dpi": 36,
                                                                "figures": False}, {}, timeout=300))
        assert [c["content"].split("\n\n")[0] for c in many["result"]["general_chunks"]][::100] == [
            "Section 1", "Section 101", "Section 201"]
        assert len(many["result"]["general_chunks"]) == 300 and not plugin.oversized
        (error,) = errors(plugin.invoke_tool("document_chunks", {"file": file_server(
            "locked.pdf", text_pdf(["x"], encrypt=True))}, {}))
        assert "locked.pdf" in error["message"] and "encrypted" in error["message"]
    finally:
        plugin.close()
        dify.close()


def test_mutated_pdfs_are_rejected_or_read_never_a_crash(service):
    """Bytes of a valid PDF changed at random (seeded; 400 such files were tried while writing it): each file goes
    in or is rejected with a reason, and the
    image beside them always goes in. PDFium runs in this process, so a crash would end the test run."""
    import random

    rng = random.Random(38)
    original = bytearray(picture_pdf([Image.new("RGB", (120, 90), (200, 30, 30)),
                                      Image.new("RGB", (90, 120), (30, 30, 200))]))
    items = []
    for k in range(24):
        mutated = bytearray(original)
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(mutated))
            mutated[at:at + rng.randint(1, 8)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        items.append(IngestItem(image=ImageInput.from_bytes(f"m{k}.pdf", bytes(mutated))))
    items.append(IngestItem(image=ImageInput.from_bytes("photo.png", png(Image.new("RGB", (64, 48), (9, 9, 9))))))
    report = service.ingest(items, "mutated", dpi=72, max_pages=50)
    outcomes = {row["source"] for row in report["items"]}
    assert "photo.png" in outcomes and outcomes == {item.image.source for item in items}
    assert all(r["reason"] for r in report["rejected"])
