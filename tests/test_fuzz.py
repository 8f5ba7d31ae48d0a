"""Property-based fuzzing (hypothesis) of everything that parses user input. Bounded for CI (each property
runs a fixed number of examples, well under 60 s in all); CROSSMODAL_FUZZ_EXAMPLES raises the count for a
longer run (docs/reliability.md)."""

import io
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from crossmodal.alignment.align import MAX_PHRASES, split_phrases
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import decode_image
from crossmodal.encoders.routing import parse_routes
from crossmodal.rerank.candidates import parse_candidate_list
from crossmodal.store import Condition, parse_filter
from crossmodal.inputs.urls import UrlPolicy, _check_url

EXAMPLES = int(os.environ.get("CROSSMODAL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seed_images() -> list[bytes]:
    out = []
    for fmt, mode in (("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "CMYK")):
        buf = io.BytesIO()
        Image.new(mode, (23, 17), 120).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=4), max_leaves=12)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
       st.integers(0, 400))
def test_image_loader_on_mutated_files(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    data = bytes(data[: max(1, len(data) - cut)])
    try:
        decoded = decode_image(data, param="image")
    except CrossmodalError as exc:
        assert str(exc).startswith("image:")
    else:
        assert decoded.image.mode == "RGB" and decoded.image.size[0] * decoded.image.size[1] > 0


@FUZZ
@given(st.binary(max_size=2048))
def test_image_loader_on_random_bytes(data):
    try:
        decode_image(data, param="image")
    except CrossmodalError:
        pass


@FUZZ
@given(st.text(max_size=1200))
def test_phrase_splitter(text):
    try:
        phrases, notes = split_phrases(text)
    except CrossmodalError as exc:
        assert str(exc).startswith("text:")
        assert not text.strip() or len(text.strip()) > 1000
        return
    assert 1 <= len(phrases) <= MAX_PHRASES and all(p.strip() for p in phrases)


@FUZZ
@given(json_values)
def test_filter_parser(value):
    for raw in (value, json.dumps(value)):
        try:
            conditions = parse_filter(raw if not isinstance(raw, (int, float, bool)) else json.dumps(raw))
        except CrossmodalError as exc:
            assert str(exc).startswith("filter:")
        else:
            assert all(isinstance(c, Condition) for c in conditions)


@FUZZ
@given(json_values | st.text(max_size=200))
def test_candidate_parser(value):
    try:
        items = parse_candidate_list(value if isinstance(value, str) else json.dumps(value))
    except CrossmodalError as exc:
        assert str(exc).startswith("candidates:")
    else:
        assert isinstance(items, list)


@FUZZ
@given(json_values)
def test_route_table_parser(value):
    try:
        routes = parse_routes(json.dumps(value))
    except CrossmodalError as exc:
        assert str(exc).startswith("routes:")
    else:
        assert set(routes) == {"default", "zh", "cross_encoder", "itm"}


@FUZZ
@given(st.sampled_from(["http://", "https://", "ftp://", "", "file:", "//"]),
       st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40))
def test_url_checker_never_reaches_internal_hosts(scheme, rest):
    import socket
    from unittest import mock

    def fake_dns(host, port, *args, **kwargs):  # no network in CI: answers derived from the name
        if host.isascii() and host.replace(".", "").isdigit():
            return real_getaddrinfo(host, port, *args, **kwargs)
        if not host.isascii():
            host.encode("idna")  # the real resolver's IDNA step, with its errors
        address = ("127.0.0.1", "10.0.0.7", "169.254.169.254", "93.184.216.34")[len(host) % 4]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    real_getaddrinfo = socket.getaddrinfo
    with mock.patch("socket.getaddrinfo", fake_dns):
        _url_property(scheme, rest)


def _url_property(scheme, rest):
    try:
        target = _check_url(scheme + rest, UrlPolicy(), "image_url")
    except CrossmodalError as exc:
        assert str(exc).startswith("image_url:")
    else:
        from crossmodal.inputs.urls import _refusal

        assert target.scheme in ("http", "https") and _refusal(target.address) is None


@FUZZ
@given(json_values | st.text(max_size=100))
def test_tool_parameter_parsers(value):
    """What the Dify tool handlers do to raw parameters: numbers, JSON objects, line and tag lists."""
    from crossmodal.dify.adapter import ToolInputError, flag, json_object, number, tag_list, text_list

    for parse in (lambda v: number(v, "top_k"), lambda v: json_object(v, "metadata")):
        try:
            parse(value)
        except ToolInputError as exc:
            assert str(exc).split(":")[0] in ("top_k", "metadata")
    raw = value if isinstance(value, str) else json.dumps(value)
    assert all(line.strip() for line in text_list(raw)) and all(tag.strip() for tag in tag_list(raw))
    assert flag(value) in (True, False)
