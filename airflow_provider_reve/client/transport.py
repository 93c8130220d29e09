"""Did a failed ``requests`` call send its request? The answer decides whether ``generate`` may be
sent again, so only a failure *proven* to happen before the request left counts as "not sent".

Proven, because the connection never carried a byte of the request:

* no TCP connection (refused, unreachable, DNS failure, connect timeout);
* a URL or header ``requests`` refused to send;
* a TLS failure *during the handshake* (certificate verification, protocol mismatch).

A TLS error raised after the handshake -- a load balancer's fatal alert or a corrupted record
after it forwarded the request -- arrives as the same ``requests.exceptions.SSLError``; only the
traceback tells the two apart, so that is what we read: an error raised from inside
``SSLSocket.do_handshake`` (or a certificate verification error) happened before the request.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import requests
from urllib3.exceptions import ConnectTimeoutError

__all__ = [
    "failed_during_tls_handshake",
    "request_may_have_been_sent",
]

# requests refuses these before opening a connection.
_REFUSED_BEFORE_SENDING = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


def request_may_have_been_sent(error: requests.exceptions.RequestException) -> bool:
    """False only when ``error`` proves the request never left this machine.

    :param error: what ``requests`` raised.
    :return: ``False`` when nothing of the request was sent; ``True`` when it may have been.
    """
    if isinstance(error, (requests.exceptions.ConnectTimeout, *_REFUSED_BEFORE_SENDING)):
        return False
    if isinstance(error, requests.exceptions.SSLError):
        return not failed_during_tls_handshake(error)
    if isinstance(error, requests.exceptions.ConnectionError) and error.args:
        # urllib3 wraps "refused", "no route", DNS failures as NewConnectionError, a
        # ConnectTimeoutError subclass: the TCP connection never existed.
        reason = getattr(error.args[0], "reason", error.args[0])
        if isinstance(reason, ConnectTimeoutError):
            return False
    return True


def failed_during_tls_handshake(error: BaseException) -> bool:
    """Whether a TLS error was raised by the handshake (nothing of the request was written).

    :param error: what the request raised.
    :return: ``True`` when the handshake raised it.
    """
    for link in _causes(error):
        if isinstance(link, (ssl.SSLCertVerificationError, ssl.CertificateError)):
            return True
        if isinstance(link, ssl.SSLError) and _raised_in(link, "do_handshake"):
            return True
    return False


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything it wraps: causes, contexts, urllib3's ``reason``, exception args."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        link = pending.pop()
        if not isinstance(link, BaseException) or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        pending.extend((link.__cause__, link.__context__, getattr(link, "reason", None), *link.args))


def _raised_in(error: BaseException, function_name: str) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_name == function_name:
            return True
        traceback = traceback.tb_next
    return False
