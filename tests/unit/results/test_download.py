"""The safe fetch of result files: a result URL, and every redirect after it, is untrusted input.

Real loopback servers only: the shipped fake serves the result files, and a tiny ``http.server``
stub plays the hostile CDN (redirects to ``file://``, to other schemes and to internal
addresses, endless bodies, stalls). Where a test needs a *public* host name, it changes what
that name resolves to (the DNS answer), never what requests or urllib3 do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_reve.results.download import (
    DownloadResult,
    ReveDownloadError,
    ReveDownloadTooLargeError,
    ReveUnsafeURLError,
    download,
    redact_url,
)
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIGNED_QUERY = "X-Amz-Signature=s3cr3t-signature-token&X-Amz-Credential=AKIAEXAMPLE"
PUBLIC_NAME = "cdn.results.example"
PUBLIC_ADDRESS = "93.184.215.14"  # a global unicast address; nothing ever connects to it here

Handler = Callable[[BaseHTTPRequestHandler], None]


class Stub:
    """A loopback HTTP server whose answer per path is a function of the test's choosing."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # ends stalled answers when the test is done
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stub.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path.startswith("http://"):  # a proxied request names the whole URL
                    path = "/" + path.split("/", 3)[3].split("?", 1)[0]
                route = stub.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)  # a reset: the client gave up, as it should have

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


def redirect_to(location: str, status: int = 302) -> Handler:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def body(data: bytes, content_type: str = "image/png") -> Handler:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def generated_png_url(server: FakeReveServer) -> str:
    """A result URL of a real (fake) generation: ``reve-2.0`` answers at once."""
    resp = requests.post(
        f"{server.url}/api/v1/generate",
        json={"model": "reve-2.0", "prompt": "a lighthouse"},
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["data"]["response"]["resultUrls"][0])


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Make chosen host names resolve to chosen addresses (in this process only).

    Returns the table; each name maps to the answers given in turn (the last one repeats),
    so a test can make a name re-resolve differently, as DNS rebinding does.
    """
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        answers = table.get(host if isinstance(host, str) else "")
        if not answers:
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


pytestmark = pytest.mark.usefixtures("no_proxy_env")


# -- the happy path ------------------------------------------------------------------------------


def test_a_result_of_the_fake_server_is_written_byte_for_byte_to_a_path(tmp_path: Path) -> None:
    with FakeReveServer() as server:
        url = generated_png_url(server)
        expected = requests.get(url, timeout=10).content
        dest = tmp_path / "hero.png"

        result = download(url, dest, allow_private_addresses=True)

    assert dest.read_bytes() == expected
    assert expected.startswith(PNG_SIGNATURE)
    assert result == DownloadResult(bytes_written=len(expected), content_type="image/png")


def test_a_result_streams_into_an_open_file_and_into_an_object_storage_path(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    with FakeReveServer() as server:
        url = generated_png_url(server)
        buffer = io.BytesIO()
        into_file = download(url, buffer, allow_private_addresses=True)
        target = ObjectStoragePath(f"file://{tmp_path}/results/hero.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        into_storage = download(url, target, allow_private_addresses=True)

    assert buffer.getvalue().startswith(PNG_SIGNATURE)
    assert into_file.bytes_written == into_storage.bytes_written == len(buffer.getvalue())
    assert (tmp_path / "results" / "hero.png").read_bytes() == buffer.getvalue()


def test_a_redirect_to_the_real_file_is_followed(stub: Stub, tmp_path: Path) -> None:
    with FakeReveServer() as server:
        url = generated_png_url(server)
        stub.routes["/signed/hero"] = redirect_to(url, status=307)
        dest = tmp_path / "hero.png"

        result = download(f"{stub.url}/signed/hero?{SIGNED_QUERY}", dest, allow_private_addresses=True)

    assert dest.read_bytes().startswith(PNG_SIGNATURE)
    assert result.bytes_written == dest.stat().st_size


# -- schemes and addresses -----------------------------------------------------------------------


def test_a_redirect_to_a_file_url_is_refused_and_nothing_is_written(stub: Stub, tmp_path: Path) -> None:
    stub.routes["/hero.png"] = redirect_to("file:///etc/passwd")
    dest = tmp_path / "hero.png"

    with pytest.raises(
        ReveUnsafeURLError, match=r"refusing redirect to file:///etc/passwd: only http and https"
    ):
        download(f"{stub.url}/hero.png", dest, allow_private_addresses=True)

    assert not dest.exists()


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/hero.png", "gopher://127.0.0.1:70/_stats"])
def test_a_redirect_to_another_scheme_is_refused(stub: Stub, tmp_path: Path, location: str) -> None:
    stub.routes["/hero.png"] = redirect_to(location, status=301)
    buffer = io.BytesIO()

    with pytest.raises(ReveUnsafeURLError, match="only http and https are downloaded"):
        download(f"{stub.url}/hero.png", buffer, allow_private_addresses=True)

    assert buffer.getvalue() == b""


def test_a_file_url_is_refused_even_with_private_addresses_allowed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me")
    buffer = io.BytesIO()

    with pytest.raises(ReveUnsafeURLError, match="refusing URL file://"):
        download(secret.as_uri(), buffer, allow_private_addresses=True)

    assert buffer.getvalue() == b""


def test_a_url_carrying_credentials_is_refused_without_repeating_them(stub: Stub) -> None:
    stub.routes["/hero.png"] = body(b"png")
    url = stub.url.replace("http://", "http://admin:hunter2@") + "/hero.png"

    with pytest.raises(ReveUnsafeURLError, match="carries credentials") as caught:
        download(url, io.BytesIO(), allow_private_addresses=True)

    assert "hunter2" not in str(caught.value) and "admin" not in str(caught.value)
    assert stub.requests == []


def test_a_loopback_result_url_is_refused_unless_private_addresses_are_allowed(tmp_path: Path) -> None:
    with FakeReveServer() as server:
        url = generated_png_url(server)
        dest = tmp_path / "hero.png"

        with pytest.raises(ReveUnsafeURLError, match=r"is at 127\.0\.0\.1, which is not a public address"):
            download(url, dest)

        assert not dest.exists()
        assert download(url, dest, allow_private_addresses=True).bytes_written > 0


@pytest.mark.parametrize("internal", ["169.254.169.254", "10.0.0.7", "127.0.0.1", "[::1]", "0.0.0.0"])
def test_a_redirect_to_an_internal_address_is_refused_when_not_allowed(
    stub: Stub, public_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch, internal: str
) -> None:
    # A public CDN name behind the user's proxy (the stub plays both): the first hop is
    # allowed, the redirect to the metadata service / the LAN / loopback must not be followed.
    public_dns[PUBLIC_NAME] = [PUBLIC_ADDRESS]
    monkeypatch.setenv("HTTP_PROXY", stub.url)
    stub.routes["/hero.png"] = redirect_to(f"http://{internal}/latest/meta-data/iam/")

    with pytest.raises(ReveUnsafeURLError, match="not a public address") as caught:
        download(f"http://{PUBLIC_NAME}/hero.png?{SIGNED_QUERY}", io.BytesIO())

    assert f"{internal}/latest/meta-data/iam/" in str(caught.value)
    # The proxy saw the first hop only: nothing was ever asked of the internal address.
    assert [r.split("?")[0] for r in stub.requests] == [f"http://{PUBLIC_NAME}/hero.png"]


def test_a_name_that_re_resolves_to_loopback_after_the_check_is_refused_before_the_body(
    stub: Stub, public_dns: dict[str, list[str]], tmp_path: Path
) -> None:
    # DNS rebinding: the check sees a public address, the connection goes to loopback.
    port = stub.url.rsplit(":", 1)[1]
    public_dns[PUBLIC_NAME] = [PUBLIC_ADDRESS, "127.0.0.1"]
    stub.routes["/hero.png"] = body(b"internal admin page")
    dest = tmp_path / "hero.png"

    with pytest.raises(ReveUnsafeURLError, match=r"is at 127\.0\.0\.1"):
        download(f"http://{PUBLIC_NAME}:{port}/hero.png", dest)

    assert not dest.exists()


def test_more_than_five_redirects_are_not_followed(stub: Stub) -> None:
    stub.routes["/loop"] = redirect_to("/loop")

    with pytest.raises(ReveUnsafeURLError, match="more than 5 redirects"):
        download(f"{stub.url}/loop", io.BytesIO(), allow_private_addresses=True)

    assert len(stub.requests) == 6  # the URL itself and five redirects


# -- size and time -------------------------------------------------------------------------------


def test_a_body_announced_larger_than_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    with FakeReveServer() as server:
        url = generated_png_url(server)
        dest = tmp_path / "hero.png"

        with pytest.raises(
            ReveDownloadTooLargeError, match=r"announces \d+ bytes, more than the limit of 64"
        ):
            download(url, dest, allow_private_addresses=True, max_bytes=64)

    assert not dest.exists()


def test_an_endless_body_without_a_length_is_cut_at_the_cap_and_the_partial_file_removed(
    stub: Stub, tmp_path: Path
) -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 4096
        while not stub.release.is_set():  # until the client hangs up (or the test ends)
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    stub.routes["/video.mp4"] = endless
    dest = tmp_path / "video.mp4"

    with pytest.raises(ReveDownloadTooLargeError, match="larger than the limit of 100000 bytes"):
        download(f"{stub.url}/video.mp4", dest, allow_private_addresses=True, max_bytes=100_000)

    assert not dest.exists()


def test_a_body_that_stalls_longer_than_the_timeout_fails_with_a_clear_error(
    stub: Stub, tmp_path: Path
) -> None:
    def stall(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(PNG_SIGNATURE)
        handler.wfile.flush()
        stub.release.wait(30)  # the rest never comes while the test runs

    stub.routes["/hero.png"] = stall
    dest = tmp_path / "hero.png"

    with pytest.raises(
        ReveDownloadError, match=r"timed out .* reading http://127\.0\.0\.1:\d+/hero\.png after 8 bytes"
    ):
        download(f"{stub.url}/hero.png", dest, allow_private_addresses=True, timeout=0.5)

    assert not dest.exists()


def test_a_body_trickling_just_fast_enough_for_the_timeout_is_abandoned_at_the_deadline(stub: Stub) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        while not stub.release.wait(0.05):  # one byte every 50 ms, well inside the timeout
            handler.wfile.write(b"x")
            handler.wfile.flush()

    stub.routes["/hero.png"] = trickle

    with pytest.raises(ReveDownloadError, match=r"took longer than 1 s"):
        download(f"{stub.url}/hero.png", io.BytesIO(), allow_private_addresses=True, timeout=5, max_seconds=1)


# -- errors and logs never carry the signed URL's token ------------------------------------------


def test_an_http_error_names_the_status_and_the_url_but_never_the_signature(
    stub: Stub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub.routes["/signed"] = redirect_to(f"/expired?{SIGNED_QUERY}")
    dest = tmp_path / "hero.png"

    with (
        caplog.at_level(logging.DEBUG, logger="airflow_provider_reve"),
        pytest.raises(ReveDownloadError) as caught,
    ):
        download(f"{stub.url}/signed?{SIGNED_QUERY}", dest, allow_private_addresses=True)

    err = caught.value
    assert err.http_status == 404
    assert str(err) == f"{stub.url}/expired?… answered HTTP 404"
    assert err.url == f"{stub.url}/expired?…"
    assert not dest.exists()
    everything = "".join(traceback.format_exception(err)) + repr(err) + caplog.text
    assert "s3cr3t-signature-token" not in everything
    assert "Following redirect" in caplog.text


def test_a_refused_connection_is_reported_without_the_signature_in_the_traceback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    with pytest.raises(ReveDownloadError, match=r"connection failed \(ConnectionError\) fetching") as caught:
        download(
            f"http://127.0.0.1:{port}/hero.png?{SIGNED_QUERY}", io.BytesIO(), allow_private_addresses=True
        )

    err = caught.value
    assert "s3cr3t-signature-token" not in "".join(traceback.format_exception(err))
    # requests' own exception names the full URL: it is neither the cause nor the context.
    assert err.__cause__ is None and err.__context__ is None


def test_redact_url_keeps_what_helps_and_drops_tokens_and_credentials() -> None:
    assert redact_url(f"https://u:p@cdn.example:8443/a/b.png?{SIGNED_QUERY}#frag") == (
        "https://…@cdn.example:8443/a/b.png?…"
    )
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"
