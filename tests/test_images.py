import io

import numpy as np
import pytest
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import decode_image


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    ],
)
def test_refused_inputs_name_the_parameter(data, needle):
    with pytest.raises(CrossmodalError) as info:
        decode_image(data, param="files[x.png]")
    assert needle in str(info.value) and str(info.value).startswith("files[x.png]")


def test_pixel_bomb_refused_from_the_header_before_decoding():
    data = encode(Image.new("1", (12000, 12000)))  # a few KB claiming 144 M pixels
    assert len(data) < 100_000
    with pytest.raises(CrossmodalError) as info:
        decode_image(data, limit=40_000_000)
    assert "144000000 pixels" in str(info.value) and info.value.status == 413


def test_truncated_jpeg_is_a_clear_error():
    data = encode(Image.new("RGB", (300, 300), "red"), "JPEG")
    with pytest.raises(CrossmodalError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"),
        (Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)), "PNG"),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),
        (Image.new("P", (20, 10)), "GIF"),
        (Image.new("LA", (20, 10)), "PNG"),
    ],
)
def test_unusual_modes_convert_to_rgb(image, fmt):
    decoded = decode_image(encode(image, fmt))
    assert decoded.image.mode == "RGB" and decoded.image.size == (20, 10)


def test_transparent_pixels_become_white_and_16_bit_keeps_range():
    clear = decode_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))))
    assert clear.image.getpixel((0, 0)) == (255, 255, 255)
    bright = decode_image(encode(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))))
    assert bright.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.image.size == (20, 40)


def test_animated_gif_uses_first_frame_and_says_so():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue())
    assert decoded.notes and "first of 3 frames" in decoded.notes[0]


def test_a_header_the_decoder_cannot_parse_is_a_clear_error():
    data = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    data[14:18] = (99).to_bytes(4, "little")  # an impossible BMP info-header size
    with pytest.raises(CrossmodalError, match="^image: the image header is corrupt") as info:
        decode_image(bytes(data))
    assert info.value.status == 422
