"""Exceptions raised by the causalkv client."""

from __future__ import annotations

from typing import Any


class CausalKVError(Exception):
    """An error answer from a node, or no usable answer at all.

    Attributes:
        status: the HTTP status of the answer, or ``None`` when no node
            answered (connection refused by every node, time-out, broken
            connection).
        body: the decoded JSON body of the answer (usually a dict with
            ``"error"``), the raw text when it was not JSON, or ``None``.
    """

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status: int | None = status
        self.body: Any = body


class KeyNotFound(CausalKVError):
    """The key does not exist (404 on a key operation)."""


class Unavailable(CausalKVError):
    """The cluster could not serve the request: 503 after every retry, or no node answered."""


class BadRequest(CausalKVError):
    """The node refused the request (a 4xx status other than 401, 403 and 404).

    For example a key longer than the node's ``MAX_KEY_LENGTH`` (400), a value
    that is ``None`` or ``""`` (400), or a value too large (413).
    """


class Unauthorized(CausalKVError):
    """The admin token is missing or wrong (401 or 403)."""


def error_for(status: int, body: Any, key_operation: bool = False) -> CausalKVError:
    """The exception that stands for the error answer ``status`` with ``body``.

    A 404 is ``KeyNotFound`` only for key operations (``key_operation``);
    elsewhere (an unknown path) it is a plain ``CausalKVError``.
    """
    reason = body.get("error") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason:
        reason = body if isinstance(body, str) and body else "no reason given"
    message = f"HTTP {status}: {reason}"
    if status == 404 and key_operation:
        return KeyNotFound(message, status, body)
    if status in (401, 403):
        return Unauthorized(message, status, body)
    if status == 503:
        return Unavailable(message, status, body)
    if 400 <= status < 500 and status != 404:
        return BadRequest(message, status, body)
    return CausalKVError(message, status, body)
