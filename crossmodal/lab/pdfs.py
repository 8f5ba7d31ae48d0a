"""PDF files for tests and benchmarks: text pages written by hand (no PDF library), pages of pictures by Pillow,
an encrypted one, a damaged one, and bombs: a form fan-out, a figure bomb, a huge embedded image."""

from __future__ import annotations

import io


def text_pdf(pages: list[str], size=(612, 792), encrypt: bool = False) -> bytes:
    """One line of Helvetica text and a red block per page; ``encrypt``: a standard security handler whose
    user password is not empty, so the file needs a password to open."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"0.9 0.1 0.1 rg 72 500 200 150 re f BT /F1 24 Tf 72 720 Td ({escaped}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        content = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {size[0]} {size[1]}] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>")
        kids.append(len(objects))
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    trailer = ""
    if encrypt:
        objects.append(f"<< /Filter /Standard /V 1 /R 2 /O <{'ab' * 32}> /U <{'cd' * 32}> /P -4 >>")
        trailer = f" /Encrypt {len(objects)} 0 R /ID [<{'01' * 16}> <{'01' * 16}>]"
    return assemble(objects, trailer)


def assemble(objects: list, trailer: str = "") -> bytes:
    """A PDF of numbered objects (object 1 the catalog), each a str or bytes body, with its xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        body = body if isinstance(body, bytes) else body.encode("latin-1")
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(offsets) + 1} /Root 1 0 R{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _stream(dictionary: str, data: bytes) -> bytes:
    return f"<< {dictionary} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream"


def _one_page(objects: list, content: str, resources: str, size=(612, 792)) -> bytes:
    """``objects`` (numbered from 4) plus a catalog, a page tree and one page drawing ``content``."""
    page = len(objects) + 4
    head = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{page} 0 R] /Count 1 >>",
            _stream("", content.encode())]
    page_object = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {size[0]} {size[1]}] /Resources {resources} "
                   "/Contents 3 0 R >>")
    return assemble([*head, *objects, page_object])


def form_bomb_pdf(fanout: int = 10, depth: int = 7) -> bytes:
    """One page that draws a form which draws the form below it ``fanout`` times, ``depth`` levels deep:
    ``fanout ** depth`` rectangles from a file of about 2 KB (a reader that renders it spends minutes)."""
    objects = [_stream("/Type /XObject /Subtype /Form /BBox [0 0 10 10]", b"0 0 1 rg 0 0 10 10 re f")]
    for _ in range(depth):
        below = len(objects) + 3  # object numbers start after catalog, pages and contents
        draws = " ".join(f"q 0.5 0 0 0.5 {k % 5 * 2} {k // 5 * 2} cm /X Do Q" for k in range(fanout))
        objects.append(_stream(f"/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /X "
                               f"{below} 0 R >> >>", draws.encode()))
    top = len(objects) + 3
    return _one_page(objects, "q 50 0 0 70 0 0 cm /F Do Q", f"<< /XObject << /F {top} 0 R >> >>")


def figure_bomb_pdf(pages: int = 3, per_form: int = 100) -> bytes:
    """Pages that each draw a form which draws a form which draws one 64 px image ``per_form`` times:
    ``per_form ** 2`` figures a page from a file of under 2 KB."""
    import zlib

    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "",
               _stream("/Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray "
                       "/BitsPerComponent 8 /Filter /FlateDecode", zlib.compress(bytes(range(64)) * 64))]
    draws = " ".join(f"q 40 0 0 40 {k % 10 * 4} {k // 10 * 4} cm /I Do Q" for k in range(per_form)).encode()
    objects.append(_stream("/Type /XObject /Subtype /Form /BBox [0 0 100 100] /Resources << /XObject << /I 3 0 R "
                           ">> >>", draws))
    nested = " ".join(f"q 1 0 0 1 {k % 10} {k // 10} cm /G Do Q" for k in range(per_form)).encode()
    objects.append(_stream("/Type /XObject /Subtype /Form /BBox [0 0 200 200] /Resources << /XObject << /G 4 0 R "
                           ">> >>", nested))
    objects.append(_stream("", b"q 1 0 0 1 50 50 cm /H Do Q"))
    kids = []
    for _ in range(pages):
        objects.append("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /H 5 0 R >> "
                       ">> /Contents 6 0 R >>")
        kids.append(len(objects))
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    return assemble(objects)


def huge_image_pdf(side: int = 12_000) -> bytes:
    """One page holding one ``side`` x ``side`` grey image that compresses to almost nothing (a 140 KB file for
    144 megapixels: decoding it is the attack)."""
    import zlib

    compressor = zlib.compressobj(9)
    row = bytes(side)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    image = _stream(f"/Type /XObject /Subtype /Image /Width {side} /Height {side} /ColorSpace /DeviceGray "
                    "/BitsPerComponent 8 /Filter /FlateDecode", data)
    return _one_page([image], "q 500 0 0 500 50 150 cm /I Do Q", "<< /XObject << /I 4 0 R >> >>")


def picture_pdf(images, resolution: float = 72.0) -> bytes:
    """A page per picture (Pillow draws each as an embedded image filling its page)."""
    buf = io.BytesIO()
    first, *rest = [im.convert("RGB") for im in images]
    first.save(buf, "PDF", save_all=True, append_images=rest, resolution=resolution)
    return buf.getvalue()
