"""A ``reve`` connection filled in wrongly is refused when it is read, naming the field, never its value.

The attacks are the mistakes users make in the connection form: the key and the Base URL
swapped, ``user:password@`` in the Base URL, a key pasted with a line break, a non-breaking
space or a typographic dash. Each is refused with a ``ReveConfigurationError`` before any DNS
lookup or HTTP request, and the message -- also shown by ``test_connection()`` in the UI --
says what is wrong without quoting the value.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from reve_test_helpers import use_connection

from airflow_provider_reve.client import ConnectionSettings, ReveClient
from airflow_provider_reve.exceptions import ReveConfigurationError
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
from airflow_provider_reve.testing import FakeReveServer

KEY = "sk-live-7Qx2Lm9Vw4Rt8Yp3Zk6N"
MODEL, PROMPT = "reve-2.0", "a red fox in the snow"


def pieces_of(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size].lower() for i in range(len(secret) - size + 1)]


def quotes_any_of(text: str, secret: str) -> bool:
    folded = text.lower()
    return any(piece in folded for piece in pieces_of(secret))


@pytest.fixture
def looked_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Host names this process asked DNS about (lookups still happen, for real)."""
    hosts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        hosts.append(host.decode() if isinstance(host, bytes) else str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    yield hosts


def refusal(call: Callable[[], Any]) -> ReveConfigurationError:
    with pytest.raises(ReveConfigurationError) as raised:
        call()
    return raised.value


# -- the Base URL field ---------------------------------------------------------------------------

NOT_HOST_NAMES = {
    "the key itself": KEY,
    "the key after https://": f"https://{KEY}",
    "the key with a path": f"{KEY}/api",
    "words": "my reve server",
    "a label ending in a hyphen": "https://reve-.example.com",
}


@pytest.mark.parametrize("host", NOT_HOST_NAMES.values(), ids=NOT_HOST_NAMES.keys())
def test_a_base_url_that_is_not_a_host_name_is_refused_without_being_quoted_or_looked_up(
    monkeypatch, looked_up, host
):
    use_connection(monkeypatch, host, password="sk-some-other-key-0000")
    hook = ReveHook()

    error = refusal(lambda: hook.generate(MODEL, PROMPT))
    ok, message = hook.test_connection()

    assert "'Base URL' (host)" in str(error)
    assert ok is False
    assert "'Base URL' (host)" in message
    for text in (str(error), repr(error), message):
        assert not quotes_any_of(text, host.partition("https://")[2] or host)
    assert looked_up == []


def test_swapped_key_and_base_url_are_refused_and_neither_value_reaches_dns_or_the_ui(monkeypatch, looked_up):
    use_connection(monkeypatch, KEY, password="https://reve2img.com")

    ok, message = ReveHook().test_connection()

    assert ok is False
    assert "swapped" in message
    assert not quotes_any_of(message, KEY)
    assert "reve2img.com" not in message
    assert looked_up == []


@pytest.mark.parametrize(
    "host",
    [f"https://me:{KEY}@reve2img.com", f"https://{KEY}@reve2img.com", f"http://me:{KEY}@127.0.0.1:9"],
)
def test_a_base_url_with_user_and_password_is_refused_without_echoing_them(monkeypatch, looked_up, host):
    use_connection(monkeypatch, host)
    hook = ReveHook()

    error = refusal(lambda: hook.get_status("some-task"))
    ok, message = hook.test_connection()

    assert "user name or password" in str(error)
    assert ok is False
    for text in (str(error), repr(error), message):
        assert not quotes_any_of(text, KEY)
        assert "me:" not in text
    assert looked_up == []


async def test_the_async_hook_refuses_the_same_base_urls_before_any_lookup(monkeypatch, looked_up):
    use_connection(monkeypatch, f"https://me:{KEY}@reve2img.com")

    with pytest.raises(ReveConfigurationError) as raised:
        await ReveAsyncHook().aget_status("some-task")

    assert not quotes_any_of(str(raised.value), KEY)
    assert looked_up == []


# -- the API key field ----------------------------------------------------------------------------

BAD_KEYS = {
    "a line feed inside": ("sk-live-7Qx2\nLm9Vw4Rt8Yp3Zk6N", "line break"),
    "CR LF inside": ("sk-live-7Qx2\r\nLm9Vw4Rt8Yp3Zk6N", "line break"),
    "a space inside": ("sk-live-7Qx2 Lm9Vw4Rt8Yp3Zk6N", "space"),
    "the Bearer prefix": (f"Bearer {KEY}", "Bearer"),
    "a non-breaking space inside": ("sk-live-7Qx2\u00a0Lm9Vw4Rt8Yp3Zk6N", "space"),
    "a typographic dash": ("sk\u2013live-7Qx2Lm9Vw4Rt8Yp3Zk6N", "non-ASCII"),
    "Cyrillic letters": ("sk-live-7Qx2Lm9Vw4Rt8Yp3Zk6N\u043a\u043b\u044e\u0447", "non-ASCII"),
    "a control character": ("sk-live-7Qx2\x00Lm9Vw4Rt8Yp3Zk6N", "control"),
    "a URL": ("https://reve2img.com", "swapped"),
}


@pytest.mark.parametrize(("key", "why"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_key_that_no_http_header_can_carry_is_refused_before_anything_is_sent(
    fake_reve_server: FakeReveServer, monkeypatch, key, why
):
    use_connection(monkeypatch, fake_reve_server.url, password=key)

    error = refusal(lambda: ReveHook().generate(MODEL, PROMPT))  # never "sent, a paid task may exist"

    assert why in str(error)
    assert "'API key' (password)" in str(error)
    assert not quotes_any_of(str(error) + repr(error), key)
    assert fake_reve_server.requests_to("total") == 0


@pytest.mark.parametrize(("key", "why"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
async def test_the_async_hook_refuses_such_a_key_with_the_same_error_not_a_bare_value_error(
    fake_reve_server: FakeReveServer, monkeypatch, key, why
):
    use_connection(monkeypatch, fake_reve_server.url, password=key)

    with pytest.raises(ReveConfigurationError, match=why) as raised:
        await ReveAsyncHook().aget_status("some-task")

    assert not quotes_any_of(str(raised.value), key)
    assert fake_reve_server.requests_to("total") == 0


@pytest.mark.parametrize(("key", "why"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_settings_built_by_hand_for_the_client_refuse_such_a_key_before_anything_is_sent(
    fake_reve_server: FakeReveServer, key, why
):
    # docs/client.md: the clients need no Airflow connection, only ConnectionSettings, which
    # are public and may be built without settings_from_connection.
    with (
        pytest.raises(ReveConfigurationError, match=why) as raised,
        ReveClient(ConnectionSettings(base_url=fake_reve_server.url, api_key=key)) as client,
    ):
        client.generate(MODEL, PROMPT)

    assert not quotes_any_of(str(raised.value) + repr(raised.value), key)
    assert raised.value.__context__ is None  # no HTTP library's error holding the header
    assert fake_reve_server.requests_to("total") == 0


def test_settings_built_by_hand_refuse_a_base_url_that_carries_the_key_without_quoting_either():
    key = "sk-live-Qm9PaZ27xLw3Rk8v"

    with pytest.raises(ReveConfigurationError, match="Base URL contains the API key") as raised:
        ConnectionSettings(base_url=f"https://reve.example.com/{key}", api_key=key)

    assert not quotes_any_of(str(raised.value) + repr(raised.value), key)


@pytest.mark.parametrize(
    "base_url", ["http://reve:{pw}@127.0.0.1:1", "https://{pw}@reve.example.com", "file:///{pw}"]
)
def test_settings_built_by_hand_refuse_a_base_url_with_a_password_or_another_scheme_without_quoting_it(
    base_url,
):
    password = "hunter2-Zq8Lm3Rx"

    with pytest.raises(ReveConfigurationError, match="Base URL") as raised:
        ReveClient(ConnectionSettings(base_url=base_url.format(pw=password), api_key=KEY))

    assert not quotes_any_of(str(raised.value) + repr(raised.value), password)


@pytest.mark.parametrize("where", ["path", "subdomain"])  # a query string is dropped anyway
def test_a_base_url_that_carries_the_api_key_is_refused_without_quoting_either(where):
    from airflow_provider_reve.client.settings import settings_from_connection
    from airflow_provider_reve.exceptions import ReveConfigurationError

    key = "sk-live-Qm9PaZ27xLw3Rk8v"
    host = {
        "path": f"https://reve.example.com/{key}",
        "subdomain": f"https://{key[3:].lower()}.reve.example.com",
    }[where]

    with pytest.raises(ReveConfigurationError, match="Base URL \\(host\\) contains the API key") as caught:
        settings_from_connection("reve_default", host, None, key, {})
    assert key[3:11] not in str(caught.value).lower()
