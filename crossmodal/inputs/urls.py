"""Fetching images by URL without opening an SSRF hole into the host's network.

Rules: http and https only; the host is resolved and every address must be a public one (loopback,
private, link-local - cloud metadata at 169.254.169.254 included -, carrier-grade NAT, multicast,
reserved, IPv6 unique-local and IPv4-mapped forms are refused) unless the host is allowlisted (Dify's own
file server, from FILES_URL, and the ``url_allowlist`` setting). The connection goes to the address that
was checked (no second DNS lookup a rebinding attack could change), with TLS still verified against the
host name. Redirects are followed by hand, each hop checked again; the body is read in chunks and cut off
at the size cap; the content type is sniffed from the bytes, never taken from the headers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import HEIF_BRANDS

MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
CHUNK = 64 * 1024
USER_AGENT = "crossmodal-dify-plugin"
IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


@dataclass(frozen=True)
class UrlPolicy:
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    max_bytes: int = 50 * 1024 * 1024

    @classmethod
    def from_settings(cls, allowlist: str | None = None, max_bytes: int | None = None) -> "UrlPolicy":
        hosts = {h.strip().lower() for h in (allowlist or "").replace("\n", ",").split(",") if h.strip()}
        for env in ("FILES_URL", "DIFY_FILES_URL"):
            host = urlsplit(os.environ.get(env, "")).hostname
            if host:
                hosts.add(host.lower())
        from crossmodal.inputs.images import MAX_IMAGE_BYTES

        return cls(frozenset(hosts), max_bytes or MAX_IMAGE_BYTES)


def fetch_image(url: str, policy: UrlPolicy | None = None, *, param: str = "image_url") -> bytes:
    """The bytes of an image at ``url``, under the rules in the module docstring."""
    import urllib3

    policy = policy or UrlPolicy.from_settings()
    for _ in range(MAX_REDIRECTS + 1):
        target = _check_url(url, policy, param)
        response = _open(target, urllib3)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise CrossmodalError(f"{url} redirects without a Location", param=param, status=422)
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise CrossmodalError(f"{url} answered HTTP {response.status}", param=param, status=422)
            data = _read_capped(response, policy.max_bytes, url, param)
        finally:
            response.release_conn()
        sniff_image(data, url, param)
        return data
    raise CrossmodalError(f"more than {MAX_REDIRECTS} redirects from {url}", param=param, status=422)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    address: str
    port: int
    path: str
    host_header: str


def _check_url(url: str, policy: UrlPolicy, param: str) -> _Target:
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError:
        raise CrossmodalError(f"'{url}' is not a valid URL", param=param) from None
    if parts.scheme not in ("http", "https"):
        raise CrossmodalError(f"only http and https URLs are fetched, not '{parts.scheme or url}'", param=param)
    host = (parts.hostname or "").lower()
    if not host:
        raise CrossmodalError(f"'{url}' has no host", param=param)
    if parts.username or parts.password:
        raise CrossmodalError("URLs with credentials in them are refused; remove the user:password@ part",
                              param=param)
    port = port or (443 if parts.scheme == "https" else 80)
    address = _resolve(host, port, param)
    if host not in policy.allow_hosts:
        refused = _refusal(address)
        if refused:
            raise CrossmodalError(
                f"{host} resolves to {address}, a {refused} address; fetching it could reach internal services. "
                "Add the host to the url_allowlist setting if it is meant to be reached", param=param, status=403)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = port == (443 if parts.scheme == "https" else 80)
    return _Target(parts.scheme, host, address, port, path, host if default_port else f"{host}:{port}")


def _resolve(host: str, port: int, param: str) -> str:
    """The first address of the host; every address it resolves to is checked by the caller's rule."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):  # unknown host, invalid IDNA, NUL bytes
        raise CrossmodalError(f"cannot resolve the host '{host}'", param=param, status=422) from None
    addresses = [info[4][0] for info in infos]
    bad = [a for a in addresses if _refusal(a)]
    # A host that resolves to a public and an internal address is judged by the internal one.
    return bad[0] if bad else addresses[0]


def _refusal(address: str) -> str | None:
    """Why an address must not be fetched from, or None for a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    for label, test in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                        ("link-local (cloud metadata lives here)", ip.is_link_local),
                        ("private", ip.is_private), ("multicast", ip.is_multicast), ("reserved", ip.is_reserved)):
        if test:
            return label
    if not ip.is_global:
        return "special-purpose"
    return None


def _open(target: _Target, urllib3):
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(target.address, target.port, timeout=timeout, retries=False,
                                           server_hostname=target.host, assert_hostname=target.host,
                                           cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout, retries=False)
    try:
        return pool.urlopen("GET", target.path, headers={"Host": target.host_header, "User-Agent": USER_AGENT,
                                                         "Accept": "image/*"},
                            redirect=False, preload_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise CrossmodalError(f"cannot fetch {target.scheme}://{target.host_header}{target.path}: "
                              f"{type(exc).__name__}", param="image_url", status=422) from None


def _read_capped(response, limit: int, url: str, param: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise CrossmodalError(f"{url} is {declared} bytes, more than the {limit} allowed", param=param, status=413)
    chunks, size = [], 0
    for chunk in response.stream(CHUNK):
        size += len(chunk)
        if size > limit:
            raise CrossmodalError(f"{url} sent more than the {limit} bytes allowed", param=param, status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def sniff_image(data: bytes, url: str, param: str) -> str:
    """The image type from the first bytes (headers can lie); a clear error for anything else."""
    for signature, mime in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] == b"ftypavif":
        return "image/avif"
    if data[4:12] in HEIF_BRANDS:
        return "image/heif"
    head = data[:64].lstrip().lower()
    kind = "HTML" if head.startswith((b"<!doctype html", b"<html")) else ("SVG" if b"<svg" in data[:512].lower()
                                                                          else "not an image format")
    raise CrossmodalError(f"{url} did not return an image ({kind}); give a link to the image file itself",
                          param=param, status=422)
