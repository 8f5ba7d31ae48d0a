"""Text in pictures at ingest (issue 45, point 1): which items are read under ocr=auto / true / false, what their
payload keeps, and the same text in Document chunks. The real PP-OCRv4 models (crossmodal/ocr) on generated
screenshots, photos and scanned pages (crossmodal/lab/scans.py)."""

from __future__ import annotations

import io

import pytest

from crossmodal.errors import CrossmodalError

scans = pytest.importorskip("crossmodal.lab.scans")
if not scans.fonts_available():
    pytest.skip("the fonts the generated scans use are missing (Debian: fonts-dejavu-core fonts-noto-cjk)",
                allow_module_level=True)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pictures():
    screen = scans.screenshot(11, code="XH-4562-KT")
    photo = scans.photo_like(12)
    page = scans.scanned_page(13, code="PS-1123-VN", lines=12)
    return screen, photo, page


@pytest.fixture(autouse=True)
def the_default_default(monkeypatch):
    monkeypatch.delenv("CROSSMODAL_OCR_DEFAULT", raising=False)  # auto, as shipped


@pytest.fixture
def service(tmp_path):
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    return Service(Settings(data_dir=str(tmp_path / "store"), model="demo-shapes"))


def _payloads(service, collection):
    info = service.store.get_collection(collection)
    points, _ = service.store.scroll(collection, limit=info.count)
    return {p.payload["source"]: p.payload for p in points}


def test_auto_reads_pictures_that_show_text_and_leaves_photos_alone(service, pictures):
    from crossmodal.service import ImageInput, IngestItem

    screen, photo, _ = pictures
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("screen.png", _png(screen.image))),
                             IngestItem(image=ImageInput.from_bytes("photo.png", _png(photo.image)))], "ocr")
    assert report["added"] == 2
    payloads = _payloads(service, "ocr")
    read = payloads["screen.png"]
    assert "XH-4562-KT" in read["ocr_text"].replace(" ", "")
    lines = read["ocr_lines"]
    assert lines and all(0.5 <= line["confidence"] <= 1 for line in lines)
    truth = next(line for line in screen.lines if "XH-4562-KT" in line.text)
    found = next(line for line in lines if "XH-4562-KT" in line["text"].replace(" ", ""))
    x0, y0, x1, y1 = found["xyxy"]  # the box in the picture's own pixels
    tx0, ty0, tx1, ty1 = truth.xyxy
    assert x0 <= tx0 + 15 and y0 <= ty0 + 10 and x1 >= tx1 - 15 and y1 >= ty1 - 10
    assert read["ocr"]["lines"] == len(lines)
    assert "ocr_text" not in payloads["photo.png"] and "ocr" not in payloads["photo.png"]


def test_true_reads_every_picture_and_false_none(service, pictures):
    from crossmodal.service import ImageInput, IngestItem

    screen, photo, _ = pictures
    service.ingest([IngestItem(image=ImageInput.from_bytes("photo.png", _png(photo.image)))], "all", ocr="true")
    assert _payloads(service, "all")["photo.png"]["ocr"]["lines"] >= 0  # read, whatever it found
    service.ingest([IngestItem(image=ImageInput.from_bytes("screen.png", _png(screen.image)))], "none", ocr=False)
    assert "ocr_text" not in _payloads(service, "none")["screen.png"]
    with pytest.raises(CrossmodalError, match="ocr"):
        service.ingest([IngestItem(text="x")], "bad", ocr="sometimes")


def test_scanned_pdf_pages_are_read_and_pages_with_a_text_layer_are_not(service, pictures):
    from crossmodal.ingest.documents import DocumentOptions, document_chunks
    from crossmodal.lab.pdfs import picture_pdf, text_pdf
    from crossmodal.service import ImageInput, IngestItem

    _, _, page = pictures
    scanned = picture_pdf([page.image], resolution=144)
    typed = text_pdf(["A typed page with a text layer"])
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("scan.pdf", scanned)),
                             IngestItem(image=ImageInput.from_bytes("typed.pdf", typed))], "pdfs")
    assert report["added"] == 2
    payloads = _payloads(service, "pdfs")
    assert "PS-1123-VN" in payloads["scan.pdf#page=1"]["ocr_text"].replace(" ", "")
    assert "ocr_text" not in payloads["typed.pdf#page=1"]
    # the Knowledge Pipeline's chunk of a scanned page carries the text read in it, not a file name
    chunks = document_chunks(scanned, "scan.pdf", DocumentOptions.parse())
    assert "PS-1123-VN" in chunks[0].content.replace(" ", "") and "page 1 of 1" not in chunks[0].content


def test_the_option_reads_its_spellings(monkeypatch):
    from crossmodal.ingest.ocr import check_ocr

    assert check_ocr(None) == check_ocr("") == "auto"
    monkeypatch.setenv("CROSSMODAL_OCR_DEFAULT", "false")  # the admin's default for calls that leave it empty
    assert check_ocr(None) == "false" and check_ocr("auto") == "auto"
    assert check_ocr(True) == check_ocr("yes") == "true" and check_ocr(False) == check_ocr("0") == "false"
    with pytest.raises(CrossmodalError) as bad:
        check_ocr("maybe")
    assert bad.value.param == "ocr" and "auto, true, false" in str(bad.value)


@pytest.mark.protocol
def test_the_ingest_node_reads_text_in_the_worker_process(plugin, file_server, pictures, tmp_path):
    from stdio_harness import json_message

    screen, _, _ = pictures
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "screens"}
    report = json_message(plugin.invoke_tool("ingest", {"files": [file_server("screen.png", _png(screen.image))],
                                                        "ocr": "auto"}, creds))
    assert report["added"] == 1
    hits = json_message(plugin.invoke_tool("search", {"query": "a window", "top_k": 1}, creds))["results"]
    assert "XH-4562-KT" in hits[0]["payload"]["ocr_text"].replace(" ", "")


def test_align_points_a_phrase_the_picture_spells_out_at_its_line(service, pictures):
    """issue 45, point 4: a phrase that matches a read line takes that line's box, in its row and its map."""
    from crossmodal.alignment.text_evidence import match
    from crossmodal.service import ImageInput

    screen, _, _ = pictures
    truth = next(line for line in screen.lines if "XH-4562-KT" in line.text)
    result = service.align(ImageInput.from_bytes("screen.png", _png(screen.image)), "XH 4562 KT and a purple giraffe",
                           overlay=False, ocr="auto")
    code, other = result["phrases"]
    evidence = code["text_evidence"]
    assert "XH-4562-KT" in evidence["line"].replace(" ", "") and code["box"] == evidence["box"]
    x0, y0, x1, y1 = evidence["box"]
    tx0, ty0, tx1, ty1 = truth.xyxy
    assert x0 <= tx0 + 15 and y0 <= ty0 + 10 and x1 >= tx1 - 15 and y1 >= ty1 - 10
    assert "text_evidence" not in other  # written nowhere
    grid = result["attention_map"]  # the line's cells carry the phrase map's highest value
    phrase_map = result["phrase_maps"][0]
    row = int((y0 + y1) / 2 * grid["rows"] / grid["height"])
    col = int((x0 + x1) / 2 * grid["cols"] / grid["width"])
    assert phrase_map[row][col] == max(max(r) for r in phrase_map)
    assert "XH-4562-KT" in result["ocr_text"].replace(" ", "")
    assert match("XH4562KT", "Ps-1l23-V7 XH-4562-KT") == 1.0 and match("PS-1123-V7", "Ps-1l23-V7") >= 0.8
    assert match("shelf", "self") < 0.8 and match("red", "red") == 0.0  # too short to tell
    assert "text_evidence" not in service.align(ImageInput.from_bytes("s.png", _png(screen.image)),
                                                "XH 4562 KT", overlay=False, ocr="false")["phrases"][0]


def test_auto_takes_only_flat_boxes_for_text_lines():
    """The detector boxes solid shapes too (the generated scenes' squares and circles, nearly square boxes): auto
    would send those pictures to a full reading, about 0.4 s each. Only boxes twice as long as high count; every
    coded page and screenshot still passes the test."""
    from crossmodal.ingest.ocr import GATE_SIDE, has_text_lines, line_aspect
    from crossmodal.lab.scans import coded_documents
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.ocr import find_text_lines

    shapes_only = []  # scenes in which the detector boxed something, all of it nearly square
    for seed in range(20_000, 20_008):
        scene = generate_scene(seed, 1024, 768).image
        lines = find_text_lines(scene, max_side=GATE_SIDE)
        if lines and all(line_aspect(line.box) < 2 for line in lines):
            shapes_only.append(scene)
    assert shapes_only, "no scene gave the detector a square box: the hazard this test guards is not shown"
    assert not any(has_text_lines(scene) for scene in shapes_only)
    assert all(has_text_lines(document.image) for document in coded_documents(4, 7))
