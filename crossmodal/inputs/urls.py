"""Fetching images by URL without opening an SSRF hole into the host's network.

Rules: http and https only; the host is resolved and every address must be a public one (loopback,
private, link-local - cloud metadata at 169.254.169.254 included -, carrier-grade NAT, multicast,
reserved, IPv6 unique-local and IPv4-mapped forms are refused) unless the host is allowlisted (Dify's own
file server, from FILES_URL, and the ``url_allowlist`` setting). The connection goes to the address that
was checked (no second DNS lookup a rebinding attack could change), with TLS still verified against the
host name. Redirects are followed by hand, each hop checked again; the body is read in chunks and cut off
at the size cap; the content type is sniffed from the bytes, never taken from the headers.

Time: a whole fetch, redirects included, has ``url_fetch_seconds`` (and never more than its call has left),
and a server must keep up ``url_min_bytes_per_second`` once ``RATE_GRACE_SECONDS`` have passed: a server that
sends one byte every few seconds is cut off, whichever phase it drips in (connect, TLS, headers, body), by a
watchdog that shuts the socket down at the deadline.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import HEIF_BRANDS
from crossmodal.limits import limit, register

MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
CHUNK = 64 * 1024
RATE_GRACE_SECONDS = 3.0
register("url_fetch_seconds", 20, "s", "a whole image-URL fetch, redirects included", cap=300, minimum=1,
         workspace=True)
register("url_min_bytes_per_second", 16_384, "bytes/s", "the slowest transfer an image-URL server may keep up "
         f"after its first {RATE_GRACE_SECONDS:g} s", cap=1 << 30, workspace=False)
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


ADMIN_ALLOWLIST_ENV = "CROSSMODAL_URL_ALLOWLIST"


@dataclass(frozen=True)
class UrlPolicy:
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    max_bytes: int = 50 * 1024 * 1024

    @classmethod
    def from_settings(cls, allowlist: str | None = None, max_bytes: int | None = None) -> "UrlPolicy":
        """The hosts that may resolve to internal addresses: Dify's own file server (FILES_URL) and the admin's
        list (CROSSMODAL_URL_ALLOWLIST). Inside a plugin the policy is the admin's, which a workspace's
        ``url_allowlist`` only narrows (to the admin's hosts it names); outside one the operator's list adds to
        it."""
        from crossmodal.inputs.images import MAX_IMAGE_BYTES
        from crossmodal.locations import running_as_plugin

        admin, given = admin_hosts(), host_list(allowlist)
        if not running_as_plugin():
            allowed = admin | given
        elif given:
            allowed = (admin & given) | dify_file_hosts()
        else:
            allowed = admin
        return cls(frozenset(allowed), max_bytes or MAX_IMAGE_BYTES)


def host_list(value: str | None) -> set[str]:
    return {h.strip().lower() for h in (value or "").replace("\n", ",").split(",") if h.strip()}


def dify_file_hosts() -> set[str]:
    hosts = set()
    for env in ("FILES_URL", "INTERNAL_FILES_URL", "DIFY_FILES_URL"):
        host = urlsplit(os.environ.get(env, "")).hostname
        if host:
            hosts.add(host.lower())
    return hosts


def admin_hosts() -> set[str]:
    return host_list(os.environ.get(ADMIN_ALLOWLIST_ENV)) | dify_file_hosts()


def check_workspace_allowlist(allowlist: str | None) -> None:
    """A workspace's ``url_allowlist`` (credential check): inside a plugin, only hosts the admin allows."""
    from crossmodal.locations import running_as_plugin

    extra = sorted(host_list(allowlist) - admin_hosts())
    if running_as_plugin() and extra:
        raise CrossmodalError(f"{', '.join(extra)} may not be reached: the admin decides which internal hosts the "
                              f"plugin may fetch from ({ADMIN_ALLOWLIST_ENV} in the plugin's environment); a workspace "
                              "can only narrow that list", param="url_allowlist", status=403)


def check_service_url(url: str, param: str) -> str:
    """A service URL a workspace gives (store_url, hf_endpoint): inside a plugin, http(s) to a public address
    or to a host the admin allows, under the same rules as image URLs; outside one, as given."""
    from crossmodal.locations import running_as_plugin

    if not running_as_plugin():
        return url
    _check_url(url, UrlPolicy(frozenset(admin_hosts())), param)
    return url


def fetch_image(url: str, policy: UrlPolicy | None = None, *, param: str = "image_url") -> bytes:
    """The bytes of an image at ``url``, under the rules in the module docstring."""
    from crossmodal.lanes import time_left

    policy = policy or UrlPolicy.from_settings()
    budget = time_left(limit("url_fetch_seconds"))
    clock = _Clock(url, param, budget)
    for _ in range(MAX_REDIRECTS + 1):
        target = _check_url(url, policy, param)
        connection, response = _open(target, clock)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise CrossmodalError(f"{url} redirects without a Location", param=param, status=422)
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise CrossmodalError(f"{url} answered HTTP {response.status}", param=param, status=422)
            data = _read_capped(response, policy.max_bytes, url, param, clock)
        finally:
            clock.release()
            connection.close()
        sniff_image(data, url, param)
        return data
    raise CrossmodalError(f"more than {MAX_REDIRECTS} redirects from {url}", param=param, status=422)


class _Clock:
    """A fetch's deadline: a watchdog shuts the current socket down when it passes (a blocked read then ends),
    and the body's reads check the rate."""

    def __init__(self, url: str, param: str, seconds: float):
        self.url, self.param, self.seconds = url, param, seconds
        self.started = time.monotonic()
        self.ends = self.started + seconds
        self.timer: threading.Timer | None = None
        self.expired = False

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise self.too_slow()
        return left

    def guard(self, sock: socket.socket) -> None:
        self.release()

        def expire() -> None:
            self.expired = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        self.timer = threading.Timer(self.left(), expire)
        self.timer.daemon = True
        self.timer.start()

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check_rate(self, received: int) -> None:
        elapsed = time.monotonic() - self.started
        floor = limit("url_min_bytes_per_second")
        if elapsed > RATE_GRACE_SECONDS and received < floor * elapsed:
            raise CrossmodalError(f"{self.url} sent {received} bytes in {elapsed:.0f} s, slower than the "
                                  f"{floor} bytes/s allowed; give a faster link, or upload the file",
                                  param=self.param, status=422)
        self.left()

    def too_slow(self) -> CrossmodalError:
        return CrossmodalError(f"{self.url} did not deliver the image within {self.seconds:.0f} s "
                               "(url_fetch_seconds); give a faster link, or upload the file", param=self.param,
                               status=422)


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
                f"{host} resolves to {address}, a {refused} address; reaching it could reach internal services. "
                f"The admin can allow the host ({ADMIN_ALLOWLIST_ENV} in the plugin's environment)", param=param,
                status=403)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = port == (443 if parts.scheme == "https" else 80)
    return _Target(parts.scheme, host, address, port, path, host if default_port else f"{host}:{port}")


# Host lookups at once. In the plugin process gevent resolves names in its hub's thread pool, the pool the
# SDK reads stdin with: a slow name server must never take every thread of it.
_LOOKUPS = threading.BoundedSemaphore(4)


def _resolve(host: str, port: int, param: str) -> str:
    """The first address of the host; every address it resolves to is checked by the caller's rule."""
    try:
        with _LOOKUPS:
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


def _open(target: _Target, clock: _Clock) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A connection to the checked address (TLS verified against the host name) and the response's head,
    each step under the fetch's deadline."""
    where = f"{target.scheme}://{target.host_header}{target.path}"
    try:
        sock = socket.create_connection((target.address, target.port),
                                        timeout=min(CONNECT_TIMEOUT, clock.left()))
    except OSError as exc:
        raise CrossmodalError(f"cannot fetch {where}: {_failure(exc, clock)}", param=clock.param,
                              status=422) from None
    clock.guard(sock)
    sock.settimeout(min(READ_TIMEOUT, clock.left()))
    connection = http.client.HTTPConnection(target.host, target.port)
    try:
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        connection.sock = sock
        connection.request("GET", target.path, headers={"Host": target.host_header, "User-Agent": USER_AGENT,
                                                        "Accept": "image/*", "Connection": "close"})
        return connection, connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        clock.release()
        connection.close()
        sock.close()
        raise CrossmodalError(f"cannot fetch {where}: {_failure(exc, clock)}", param=clock.param,
                              status=422) from None


def _failure(exc: Exception, clock: _Clock) -> str:
    if clock.expired or time.monotonic() >= clock.ends:
        return f"no answer within {clock.seconds:.0f} s (url_fetch_seconds)"
    return type(exc).__name__


def _read_capped(response: http.client.HTTPResponse, limit_bytes: int, url: str, param: str,
                 clock: _Clock) -> bytes:
    declared = response.getheader("Content-Length")
    # ASCII digits only: str.isdigit() passes "³", and int() refuses it and more than 4,300 digits.
    if declared and declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit_bytes):
        size = declared if len(declared) <= 18 else f"a {len(declared)}-digit number of"
        raise CrossmodalError(f"{url} is {size} bytes, more than the {limit_bytes} bytes allowed", param=param,
                              status=413)
    chunks, size = [], 0
    while True:
        try:
            chunk = response.read1(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            if clock.expired:
                raise clock.too_slow() from None
            raise CrossmodalError(f"cannot read {url}: {type(exc).__name__}", param=param, status=422) from None
        if not chunk:
            if clock.expired:
                raise clock.too_slow()
            return b"".join(chunks)
        size += len(chunk)
        if size > limit_bytes:
            raise CrossmodalError(f"{url} sent more than the {limit_bytes} bytes allowed", param=param, status=413)
        chunks.append(chunk)
        clock.check_rate(size)


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
