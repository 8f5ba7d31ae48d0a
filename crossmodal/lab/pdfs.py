"""PDF files for tests and benchmarks: text pages written by hand (no PDF library), pages of pictures by Pillow,
an encrypted one, a damaged one."""

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
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(offsets) + 1} /Root 1 0 R{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def picture_pdf(images, resolution: float = 72.0) -> bytes:
    """A page per picture (Pillow draws each as an embedded image filling its page)."""
    buf = io.BytesIO()
    first, *rest = [im.convert("RGB") for im in images]
    first.save(buf, "PDF", save_all=True, append_images=rest, resolution=resolution)
    return buf.getvalue()
