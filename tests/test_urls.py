"""URL fetching: internal addresses refused (each redirect hop too), size capped while streaming,
content type sniffed from the bytes."""

import http.server
import io
import threading

import pytest
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.urls import UrlPolicy, _refusal, fetch_image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, "PNG")
    return buf.getvalue()


ROUTES = {
    "/ok.png": (200, {"Content-Type": "text/plain"}, _png()),  # a lying header: the bytes decide
    "/page": (200, {"Content-Type": "image/png"}, b"<!DOCTYPE html><html>hi</html>"),
    "/big": (200, {"Content-Type": "image/png"}, _png() + b"\0" * 300_000),
    "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
    "/to-ok": (301, {"Location": "/ok.png"}, b""),
    "/loop": (302, {"Location": "/loop"}, b""),
    "/missing": (404, {}, b"no"),
    # Content-Length values str.isdigit() passes and int() refuses: read as undeclared, or refused as too long
    "/superscript-length": (200, {"Content-Type": "image/png", "Content-Length": "\u00b3"}, _png()),
    "/5000-digit-length": (200, {"Content-Type": "image/png", "Content-Length": "9" * 5000}, _png()),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, headers, body = ROUTES.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if self.path != "/big" and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))  # /big streams without declaring its size
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


ALLOW_LOCAL = UrlPolicy(frozenset({"127.0.0.1"}), max_bytes=200_000)


@pytest.mark.parametrize(
    "address, reason",
    [("127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("10.1.2.3", "private"),
     ("192.168.0.1", "private"), ("100.64.0.1", "special-purpose"), ("::1", "loopback"),
     ("fe80::1", "link-local"), ("fc00::1", "private"), ("::ffff:127.0.0.1", "loopback"),
     ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("8.8.8.8", None), ("2606:4700::1111", None)],
)
def test_internal_addresses_are_refused(address, reason):
    refusal = _refusal(address)
    assert (refusal is None) if reason is None else (reason in refusal)


def test_loopback_refused_unless_allowlisted(server):
    with pytest.raises(CrossmodalError) as info:
        fetch_image(f"{server}/ok.png", UrlPolicy())
    assert info.value.status == 403 and "loopback" in str(info.value) and "CROSSMODAL_URL_ALLOWLIST" in str(info.value)
    assert Image.open(io.BytesIO(fetch_image(f"{server}/ok.png", ALLOW_LOCAL))).size == (20, 20)


def test_an_unreadable_declared_length_is_read_as_undeclared(server):
    assert Image.open(io.BytesIO(fetch_image(f"{server}/superscript-length", ALLOW_LOCAL))).size == (20, 20)


def test_redirects_are_checked_at_every_hop(server):
    assert fetch_image(f"{server}/to-ok", ALLOW_LOCAL).startswith(b"\x89PNG")
    with pytest.raises(CrossmodalError, match="169.254.169.254.*link-local"):
        fetch_image(f"{server}/to-metadata", ALLOW_LOCAL)
    with pytest.raises(CrossmodalError, match="redirects"):
        fetch_image(f"{server}/loop", ALLOW_LOCAL)


@pytest.mark.parametrize(
    "path, needle, status",
    [("/page", "did not return an image (HTML)", 422), ("/big", "more than the 200000 bytes", 413),
     ("/missing", "HTTP 404", 422), ("/5000-digit-length", "more than the 200000 bytes", 413)],
)
def test_bad_answers(server, path, needle, status):
    with pytest.raises(CrossmodalError) as info:
        fetch_image(f"{server}{path}", ALLOW_LOCAL)
    assert needle in str(info.value) and info.value.status == status


@pytest.mark.parametrize(
    "url, needle",
    [("file:///etc/passwd", "only http and https"), ("ftp://example.com/x.png", "only http and https"),
     ("http://user:pw@example.com/x.png", "credentials"), ("http:///x.png", "no host"),
     ("http://2130706433/x.png", "loopback"), ("http://localhost/x.png", "loopback"),
     ("http://no-such-host.invalid/x.png", "cannot resolve")],
)
def test_refused_urls(url, needle):
    with pytest.raises(CrossmodalError, match=needle):
        fetch_image(url, UrlPolicy())
