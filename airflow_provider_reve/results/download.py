"""Fetch one result file from a URL the API handed us, without trusting that URL.

A result URL comes from the API's answer, and a redirect from whatever server it names. A URL
such as ``file:///etc/passwd``, ``http://169.254.169.254/`` (cloud metadata) or
``http://127.0.0.1:8080/admin`` must not make a worker read local files or call services
that trust the worker's network position (SSRF). So :func:`download`:

* speaks ``http`` and ``https`` only, and follows redirects itself (at most ``max_redirects``),
  re-checking every hop: no other scheme, no downgrade from ``https`` to ``http``, no
  credentials in the URL;
* resolves the host name and refuses when any address it resolves to is not public
  (private, loopback, link-local, multicast, reserved, unspecified...), then checks the
  address the connection was actually made to, so a name that re-resolves to an internal
  address between the two (DNS rebinding) is caught before any byte of the body is read.
  When ``HTTP(S)_PROXY`` applies, the proxy resolves the name; only the first check applies;
* streams into the destination with a size cap, a timeout for every wait on the network
  and a deadline for the whole transfer, so a hostile or broken server cannot fill the disk
  or hold a worker slot forever;
* never sends anything of the Reve connection (the API key stays with the hook) and never
  writes a URL's query string (signed-URL tokens) or credentials into an error or log line;
* never derives a file name from the URL: the caller names the destination.

``allow_private_addresses=True`` lifts the address check, for a server the user chose on
their own network or loopback (the offline fake in tests). It never lifts the scheme check.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3

from airflow_provider_reve.defaults import DEFAULT_MAX_BYTES
from airflow_provider_reve.exceptions import (
    ReveDownloadError,
    ReveDownloadTooLargeError,
    ReveUnsafeURLError,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DownloadResult",
    "ReveDownloadError",
    "ReveDownloadTooLargeError",
    "ReveUnsafeURLError",
    "check_url",
    "download",
    "is_public_address",
    "redact_url",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection or for the next bytes of an answer."""
DEFAULT_MAX_SECONDS = 900.0
"""Seconds the whole download (every hop and the body) may take."""
DEFAULT_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download` wrote.

    :param bytes_written: the number of bytes written to the destination.
    :param content_type: the media type of the answer, lower-cased, without parameters
        (``"image/png"``), or ``None`` when the server sent none. Not checked against the
        bytes: the server says so.
    """

    bytes_written: int
    content_type: str | None


class _SupportsWrite(Protocol):
    """A binary sink: an open file, or a wrapper that counts/hashes on the way."""

    def write(self, data: bytes, /) -> Any: ...


@runtime_checkable
class _WritablePath(Protocol):
    """A path that opens as a binary file: ``pathlib.Path``, ``airflow.sdk.ObjectStoragePath``."""

    def open(self, mode: str, /) -> Any: ...

    def unlink(self) -> Any: ...


def redact_url(url: str) -> str:
    """``url`` as it may appear in an error or a log line: scheme, host, port and path.

    The query string and fragment (where signed URLs carry their tokens) and any
    ``user:password@`` are replaced by ``…``.

    :param url: any URL.
    :return: the URL without its secrets.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{'…@' if '@' in parts.netloc else ''}{host}{f':{port}' if port else ''}"
    tail = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


def download(
    url: str,
    dest: IO[bytes] | _SupportsWrite | _WritablePath,
    *,
    allow_private_addresses: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    redact: Callable[[str], str] | None = None,
) -> DownloadResult:
    """Stream ``url`` into ``dest`` under the policy of this module (see its docstring).

    :param dest: a writable binary file object (left open, possibly holding part of the
        body if an error is raised), or a path-like object with ``.open("wb")`` such as
        ``pathlib.Path`` or ``airflow.sdk.ObjectStoragePath``: opened only once a ``200``
        answer arrived, and removed again if the transfer then fails.
    :param allow_private_addresses: also connect to private, loopback, link-local and other
        non-public addresses. Only for a server you chose yourself.
    :param max_bytes: largest body accepted; a larger one raises
        :class:`.ReveDownloadTooLargeError`.
    :param timeout: seconds to wait for a connection, an answer or the next bytes of the body.
    :param max_seconds: seconds the whole download may take, however steadily bytes arrive.
    :param max_redirects: redirects followed before giving up.
    :param redact: applied to every URL in a log line or an error (e.g. the connection's
        :class:`~airflow_provider_reve.client.redact.Redactor`): a redirect may put a secret in a path.
    :raises ReveUnsafeURLError: the URL or a redirect is refused by the policy.
    :raises ReveDownloadTooLargeError: the body is larger than ``max_bytes``.
    :raises ReveDownloadError: any other failure: an HTTP error status, a timeout, a broken
        connection.
    :param url: the result URL.
    :return: how many bytes were written, and the answer's media type.
    """
    scrub = redact or _unchanged
    try:
        return _fetch(
            url, dest, allow_private_addresses, max_bytes, timeout, max_seconds, max_redirects, scrub
        )
    except ReveDownloadError as error:
        failure = error
    # One exit for every error message, however deep it was built; raised outside the ``except``
    # so that the unscrubbed original rides along neither as cause nor as context.
    raise type(failure)(scrub(str(failure)), url=scrub(failure.url), http_status=failure.http_status)


def _unchanged(text: str) -> str:
    return text


def _fetch(
    url: str,
    dest: IO[bytes] | _SupportsWrite | _WritablePath,
    allow_private_addresses: bool,
    max_bytes: int,
    timeout: float,
    max_seconds: float,
    max_redirects: int,
    scrub: Callable[[str], str],
) -> DownloadResult:
    deadline = time.monotonic() + max_seconds
    current = url
    previous_scheme: str | None = None
    with requests.Session() as http:
        # A session auth, even one that adds nothing, stops requests from reading ~/.netrc
        # (or $NETRC) and sending the worker's stored credentials to a host the API named.
        # trust_env stays on: proxy settings still apply.
        http.auth = _no_credentials
        for _hop in range(max_redirects + 1):
            parts = check_url(current, previous_scheme)
            proxied = _uses_proxy(http, current)
            if not allow_private_addresses:
                _check_resolved(parts, current)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReveDownloadError(
                    f"download of {redact_url(url)} took longer than {max_seconds:g} s", url=redact_url(url)
                )
            response = _get(http, current, min(timeout, remaining))
            with contextlib.closing(response):
                if not allow_private_addresses and not proxied:
                    _check_peer(response, current)
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise ReveDownloadError(
                            f"{redact_url(current)} answered HTTP {response.status_code} without a Location",
                            url=redact_url(current),
                            http_status=response.status_code,
                        )
                    previous_scheme = parts.scheme
                    current = urljoin(current, location)
                    log.info(
                        "Following redirect from %s to %s",
                        scrub(redact_url(response.url)),
                        scrub(redact_url(current)),
                    )
                    continue
                if response.status_code != 200:
                    raise ReveDownloadError(
                        f"{redact_url(current)} answered HTTP {response.status_code}",
                        url=redact_url(current),
                        http_status=response.status_code,
                    )
                return _save(response, current, dest, max_bytes, deadline, max_seconds)
    raise ReveUnsafeURLError(
        f"{redact_url(url)}: more than {max_redirects} redirects; not following any further",
        url=redact_url(url),
    )


def check_url(url: str, previous_scheme: str | None) -> SplitResult:
    """Refuse a URL (or a redirect from one with ``previous_scheme``) the policy does not fetch.

    :param url: the URL to fetch.
    :param previous_scheme: the scheme of the URL that redirected here; ``None`` for the first URL.
    :return: the URL, split.
    :raises ReveUnsafeURLError: for a URL that is not http(s), has no host, carries credentials, or
        a redirect from https to http.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise ReveUnsafeURLError(f"{shown}: not a valid URL", url=shown) from None
    scheme = parts.scheme.lower()
    what = "redirect to" if previous_scheme else "URL"
    if scheme not in _SCHEMES:
        raise ReveUnsafeURLError(
            f"refusing {what} {shown}: only http and https are downloaded, not {scheme or 'no scheme'!r}",
            url=shown,
        )
    if previous_scheme == "https" and scheme == "http":
        raise ReveUnsafeURLError(
            f"refusing redirect to {shown}: it downgrades https to plain http", url=shown
        )
    if not parts.hostname:
        raise ReveUnsafeURLError(f"refusing {what} {shown}: no host name", url=shown)
    if parts.username is not None or parts.password is not None:
        raise ReveUnsafeURLError(f"refusing {what} {shown}: it carries credentials", url=shown)
    return parts


# IPv6 ranges that carry an IPv4 address, and where in them it sits. A connection to one of them
# reaches (through a translator, a tunnel or the dual stack) the IPv4 address inside, so they are
# judged as that address is: "64:ff9b::a9fe:a9fe" is the cloud metadata service, reached by NAT64.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translator
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated "::a.b.c.d"
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT "::ffff:0:a.b.c.d"


def is_public_address(address: str) -> bool:
    """Whether ``address`` (IPv4 or IPv6 text) is a public, unicast address.

    An IPv6 address that embeds an IPv4 one (mapped, compatible, SIIT, NAT64, 6to4, Teredo) is
    public only when the IPv4 address inside is public too.

    :param address: an IP address, as text.
    :return: ``True`` for a public unicast address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL_USE:
            return False  # a site-local translator: whatever it reaches is the site's own network
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            if ip.ipv4_mapped is not None or ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED:
                ip = embedded  # these *are* the IPv4 address, spelled in IPv6
            elif not _is_public(embedded):
                return False
    return _is_public(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.sixtofour is not None:
        return ip.sixtofour  # 2002:AABB:CCDD::/48 is the 6to4 site of AA.BB.CC.DD
    if ip.teredo is not None:
        return ip.teredo[1]  # the client, whose bits Teredo stores inverted (Python undoes it)
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global is False for private, loopback, link-local, shared (CGNAT), reserved,
    # documentation and unspecified ranges; multicast is excluded explicitly, as some
    # multicast ranges count as "global".
    return ip.is_global and not ip.is_multicast


def _refuse_address(url: str, address: str) -> ReveUnsafeURLError:
    shown = redact_url(url)
    return ReveUnsafeURLError(
        f"refusing {shown}: {urlsplit(url).hostname} is at {address}, which is not a public address "
        "(private, loopback, link-local, multicast or reserved). Pass allow_private_addresses=True "
        "only for a server you chose yourself.",
        url=shown,
    )


def _check_resolved(parts: SplitResult, url: str) -> None:
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        reason = err.strerror or type(err).__name__
    else:
        for address in _addresses(info[4] for info in infos):
            if not is_public_address(address):
                raise _refuse_address(url, address)
        return
    shown = redact_url(url)
    raise ReveDownloadError(f"cannot resolve the host of {shown}: {reason}", url=shown)


def _addresses(sockaddrs: Iterable[tuple[Any, ...]]) -> list[str]:
    return sorted({str(sockaddr[0]) for sockaddr in sockaddrs})


def _check_peer(response: requests.Response, url: str) -> None:
    """The address the connection really went to; fail closed when it cannot be known."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    try:
        address = str(sock.getpeername()[0]) if sock is not None else None
    except OSError:
        address = None
    if address is None:
        shown = redact_url(url)
        raise ReveUnsafeURLError(
            f"refusing {shown}: cannot tell which address the connection went to", url=shown
        )
    if not is_public_address(address):
        raise _refuse_address(url, address)


def _uses_proxy(http: requests.Session, url: str) -> bool:
    settings = http.merge_environment_settings(url, {}, None, None, None)
    return bool(requests.utils.select_proxy(url, settings.get("proxies") or {}))


def _no_credentials(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _get(http: requests.Session, url: str, timeout: float) -> requests.Response:
    try:
        return http.get(
            url,
            stream=True,
            allow_redirects=False,
            timeout=(timeout, timeout),
            # The size cap and Content-Length then count the file's own bytes.
            headers={"Accept-Encoding": "identity"},
        )
    except requests.RequestException as err:
        failure = _describe(err)
    # Raised outside the ``except``: requests' messages repeat the full URL, query string
    # included, and must not ride along as ``__context__`` into a traceback.
    shown = redact_url(url)
    raise ReveDownloadError(f"{failure} fetching {shown}", url=shown)


def _describe(err: BaseException) -> str:
    if isinstance(err, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"timed out ({type(err).__name__})"
    if isinstance(err, requests.ConnectionError) and any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in err.args
    ):
        return f"timed out ({type(err).__name__})"
    return f"connection failed ({type(err).__name__})"


def _media_type(response: requests.Response) -> str | None:
    value = response.headers.get("Content-Type")
    if not value:
        return None
    media_type = value.split(";", 1)[0].strip().lower()
    # Recorded in manifests, XCom and Asset extras: only a well-formed, short type.
    return media_type if _MEDIA_TYPE.fullmatch(media_type) else None


def _save(
    response: requests.Response,
    url: str,
    dest: IO[bytes] | _SupportsWrite | _WritablePath,
    max_bytes: int,
    deadline: float,
    max_seconds: float,
) -> DownloadResult:
    shown = redact_url(url)
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise ReveDownloadTooLargeError(
            f"{shown} announces {int(announced)} bytes, more than the limit of {max_bytes} (max_bytes)",
            url=shown,
        )
    media_type = _media_type(response)
    if media_type is not None and (media_type.startswith("text/") or media_type.endswith(("/json", "/xml"))):
        # A CDN's "Access denied" page or a proxy's error page with a 200: not the file.
        raise ReveDownloadError(
            f"{shown} answered a {media_type} page instead of a media file", url=shown, http_status=None
        )
    if not isinstance(dest, _WritablePath):
        written = _copy(response, dest, shown, max_bytes, deadline, max_seconds)
    else:
        try:
            with dest.open("wb") as fh:
                written = _copy(response, fh, shown, max_bytes, deadline, max_seconds)
        except BaseException:
            # A half-written file would look like a result to whatever reads the folder next.
            with contextlib.suppress(Exception):
                dest.unlink()
            raise
    return DownloadResult(bytes_written=written, content_type=media_type)


def _copy(
    response: requests.Response,
    fh: IO[bytes] | _SupportsWrite,
    shown: str,
    max_bytes: int,
    deadline: float,
    max_seconds: float,
) -> int:
    raw = response.raw
    # read1 returns whatever has arrived instead of waiting for a full chunk, so the deadline
    # is checked even while a server trickles bytes just fast enough to dodge the timeout.
    read = getattr(raw, "read1", raw.read)
    written = 0
    while True:
        if time.monotonic() > deadline:
            raise ReveDownloadError(f"download of {shown} took longer than {max_seconds:g} s", url=shown)
        failure = None
        try:
            chunk = read(_CHUNK, decode_content=True)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as err:
            failure = _describe(err)  # raised below, without the URL-bearing original as context
        if failure is not None:
            raise ReveDownloadError(f"{failure} reading {shown} after {written} bytes", url=shown)
        if not chunk:
            if written == 0:
                # A 200 with nothing in it is no result file: fail like any broken transfer.
                raise ReveDownloadError(f"{shown} answered an empty body instead of a media file", url=shown)
            return written
        written += len(chunk)
        if written > max_bytes:
            raise ReveDownloadTooLargeError(
                f"{shown} is larger than the limit of {max_bytes} bytes (max_bytes); stopped reading",
                url=shown,
            )
        fh.write(chunk)
