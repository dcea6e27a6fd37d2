"""The causalkv client: a ``Client`` for a cluster and ``Session`` objects
that carry the causal context from one request to the next."""

from __future__ import annotations

import copy
import email.utils
import http.client
import json
import math
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Sequence, Union

from .errors import KeyNotFound, Unavailable, error_for

__all__ = ["Client", "JSONValue", "Session"]

#: What a value can be: anything ``json`` encodes (the node refuses ``None`` and ``""``).
JSONValue = Union[Dict[str, Any], List[Any], str, int, float, bool, None]

#: Longest wait before one retry of a 503, in seconds, whatever Retry-After says.
MAX_RETRY_WAIT = 2.0

#: Wait before a retry when the 503 had no usable Retry-After: doubled per retry, capped.
DEFAULT_RETRY_WAIT = 0.1


class _Missing:
    """The type of the sentinel that marks ``get`` called without a default."""

    def __repr__(self) -> str:
        return "<no default>"


_MISSING: Any = _Missing()


def _node_url(node: str) -> str:
    """``host:port`` or ``http(s)://host:port[/]`` as a base URL without trailing slash."""
    node = node.strip()
    if not node:
        raise ValueError("empty node address")
    if "://" not in node:
        node = "http://" + node
    scheme = node.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"node {node!r}: only http and https are supported")
    return node.rstrip("/")


def _parse_nodes(nodes: Sequence[str] | str) -> list[str]:
    """The base URLs of ``nodes`` (a list, or one comma-separated string)."""
    if isinstance(nodes, str):
        items = [n for n in nodes.split(",") if n.strip()]
    else:
        items = list(nodes)
    urls = [_node_url(n) for n in items]
    if not urls:
        raise ValueError("no node address given")
    return urls


def _key_path(key: str) -> str:
    """The URL path of ``key`` (percent-encoded as one path segment)."""
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__name__}")
    if not key:
        raise ValueError("a key is at least one character long")
    return "/kv-store/keys/" + urllib.parse.quote(key, safe="")


def _decode(raw: bytes) -> Any:
    """A body as JSON, or as text when it is not JSON (``None`` when empty)."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_wait(retry_after: str | None, retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (0-based) of a 503.

    ``Retry-After`` in seconds or as an HTTP date is honoured; without it the
    wait doubles from ``DEFAULT_RETRY_WAIT``. Never more than ``MAX_RETRY_WAIT``.
    """
    wait: float | None = None
    if retry_after is not None:
        text = retry_after.strip()
        try:
            wait = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
                wait = when.timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                wait = None
    if wait is None or math.isnan(wait):  # absent or unparsable
        wait = DEFAULT_RETRY_WAIT * (2**retry)
    return min(max(wait, 0.0), MAX_RETRY_WAIT)


class _Answer:
    """One HTTP answer: status, the ``Retry-After`` header and the decoded body."""

    __slots__ = ("body", "retry_after", "status")

    def __init__(self, status: int, retry_after: str | None, body: Any) -> None:
        self.status = status
        self.retry_after = retry_after
        self.body = body


class Client:
    """A client of one causalkv cluster.

    Args:
        nodes: the nodes to send requests to, as ``"host:port"`` or URLs
            (``"http://host:port"``, ``"https://host:port"``): a list, or one
            comma-separated string. Any node of the cluster serves any key
            (it forwards when it must), so a subset is enough.
        timeout: seconds to wait for one node's answer (connect and read).
        retries: how many times a request answered with 503 is sent again
            (to the next node) before ``Unavailable`` is raised.
        admin_token: sent as ``Authorization: Bearer <token>`` with
            ``view_change`` (the node's ``ADMIN_TOKEN``, or ``CLUSTER_KEY``).
        ssl_context: TLS settings for ``https://`` nodes (a CA, a client
            certificate); ``None`` uses the system's defaults.

    Requests go to the nodes round robin. A node that refuses the connection
    is skipped (the next one is tried); when every node refuses,
    ``Unavailable`` is raised at once. A 503 answer is retried after the
    wait its ``Retry-After`` header asks for (capped at 2 s per retry), at
    most ``retries`` times. Time-outs and broken connections are not
    retried (a write may have been applied): they raise ``Unavailable``.

    Environment proxy settings are ignored: requests go to the nodes
    directly. A ``Client`` may be shared by threads; a ``Session`` may not.
    """

    def __init__(
        self,
        nodes: Sequence[str] | str,
        timeout: float = 5.0,
        retries: int = 5,
        admin_token: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be at least 0")
        self._urls: list[str] = _parse_nodes(nodes)
        self.timeout: float = timeout
        self.retries: int = retries
        self.admin_token: str | None = admin_token
        self._lock = threading.Lock()
        self._next = 0
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"Client({self._urls!r}, timeout={self.timeout!r}, retries={self.retries!r})"

    @property
    def nodes(self) -> list[str]:
        """The nodes' base URLs, in the order requests visit them."""
        return list(self._urls)

    def session(self, context: Mapping[str, Any] | None = None) -> Session:
        """A new session; ``context`` resumes one (a ``Session.context`` kept earlier)."""
        return Session(self, context)

    def view_change(self, view: Sequence[str] | str, repl_factor: int | None = None) -> list[dict[str, Any]]:
        """Asks the cluster to move to ``view`` (node addresses, in order).

        ``repl_factor`` left out keeps the current replication factor. Returns
        the new shards, each ``{"shard-id", "key-count", "replicas"}``.
        Raises ``Unauthorized`` without the right ``admin_token``,
        ``BadRequest`` for an invalid view, ``Unavailable`` when a node could
        not take part (the old view then stays in force).
        """
        nodes = [n.strip() for n in view.split(",")] if isinstance(view, str) else [str(n) for n in view]
        payload: dict[str, Any] = {"view": nodes}
        if repl_factor is not None:
            payload["repl-factor"] = repl_factor
        headers = {}
        if self.admin_token is not None:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        answer = self._request("PUT", "/kv-store/view-change", payload, headers=headers)
        if answer.status != 200:
            raise error_for(answer.status, answer.body)
        shards = answer.body.get("shards") if isinstance(answer.body, dict) else None
        return list(shards) if isinstance(shards, list) else []

    def _request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """Sends one request (JSON ``payload``, if any) with the retry rules
        of the class; returns the final answer, whatever its status other
        than 503. Raises ``Unavailable`` for 503 once ``retries`` are spent,
        and when no node answered.
        """
        data = None if payload is None else json.dumps(payload, allow_nan=False).encode("utf-8")
        retry = 0
        while True:
            answer = self._send(method, path, data, headers or {})
            if answer.status != 503:
                return answer
            if retry >= self.retries:
                raise error_for(503, answer.body)
            time.sleep(_retry_wait(answer.retry_after, retry))
            retry += 1

    def _take_start(self) -> int:
        """The index of the node the next request goes to first (round robin)."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self._urls)
            return start

    def _send(self, method: str, path: str, data: bytes | None, headers: Mapping[str, str]) -> _Answer:
        """One attempt: the next node round robin, skipping nodes that refuse the connection."""
        start = self._take_start()
        refused: list[str] = []
        for i in range(len(self._urls)):
            url = self._urls[(start + i) % len(self._urls)] + path
            request = urllib.request.Request(url, data=data, method=method)
            request.add_header("Accept", "application/json")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            for name, value in headers.items():
                request.add_header(name, value)
            try:
                status, retry_after, raw = self._open(request)
            except ConnectionRefusedError:
                refused.append(url)
                continue
            return _Answer(status, retry_after, _decode(raw))
        raise Unavailable("every node refused the connection: " + ", ".join(refused))

    def _open(self, request: urllib.request.Request) -> tuple[int, str | None, bytes]:
        """Status, ``Retry-After`` and body of one HTTP exchange.

        Raises ``ConnectionRefusedError`` when the node refused the
        connection, ``Unavailable`` for any other failure to get an answer.
        """
        url = request.full_url
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Retry-After"), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers.get("Retry-After"), error.read()
        except urllib.error.URLError as error:
            if isinstance(error.reason, ConnectionRefusedError):
                raise error.reason from None
            if isinstance(error.reason, (socket.timeout, TimeoutError)):
                raise Unavailable(f"{url}: no answer within {self.timeout} s") from error
            raise Unavailable(f"{url}: {error.reason}") from error
        except (socket.timeout, TimeoutError) as error:
            raise Unavailable(f"{url}: no answer within {self.timeout} s") from error
        except ConnectionRefusedError:
            raise
        except (http.client.HTTPException, OSError) as error:
            raise Unavailable(f"{url}: {error!r}") from error


class Session:
    """A sequence of requests that observe each other: the session sends the
    last causal context it received with every request and keeps the one
    each answer carries (the node merges it with what it served), so it
    reads its own writes, and whatever they depended on, at any node.

    Get one from ``Client.session()``. Not for use by several threads at once.
    """

    def __init__(self, client: Client, context: Mapping[str, Any] | None = None) -> None:
        self._client = client
        self._context: dict[str, Any] = dict(context) if context else {}

    def __repr__(self) -> str:
        return f"Session({self._client!r}, context={self._context!r})"

    @property
    def context(self) -> dict[str, Any]:
        """The causal context to send back (a copy; opaque: do not depend on its shape).

        Keep it to resume later with ``Client.session(context)``.
        """
        return copy.deepcopy(self._context)

    def _call(self, method: str, path: str, payload: dict[str, Any], key_operation: bool = True) -> dict[str, Any]:
        """Sends ``payload`` with the session's context; keeps the answer's
        context; returns a successful answer's body or raises its error."""
        payload["causal-context"] = self._context
        answer = self._client._request(method, path, payload)
        body = answer.body if isinstance(answer.body, dict) else {}
        # Only answers to a served request carry the merged context: a
        # request refused before it was read (a bad key, say) is answered
        # with an empty one, which must not wipe the session's history.
        if 200 <= answer.status < 300 or (answer.status == 404 and key_operation):
            context = body.get("causal-context")
            if isinstance(context, dict):
                self._context = context
        if 200 <= answer.status < 300:
            return body
        raise error_for(answer.status, answer.body, key_operation=key_operation)

    def put(self, key: str, value: JSONValue) -> bool:
        """Writes ``value`` (any JSON value but ``None`` and ``""``) under ``key``.

        Returns True when the key was created, False when an existing value
        was replaced. Raises ``BadRequest`` for a key that is too long or
        invalid, or a value that is missing or too large. A 503 is retried
        like any request, though a write answered 503 may have been applied
        all the same: the retry is then a second write (answered False).
        """
        body = self._call("PUT", _key_path(key), {"value": value})
        replaced = body.get("replaced")
        return not replaced if isinstance(replaced, bool) else True

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``, JSON-decoded (dict, list, str, int, float, bool).

        When the key does not exist: ``default`` if one is given, else
        ``KeyNotFound``.
        """
        try:
            body = self._call("GET", _key_path(key), {})
        except KeyNotFound:
            if default is _MISSING:
                raise
            return default
        return body.get("value")

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        """Several keys read from one causally consistent cut (a snapshot read).

        Returns every key asked for, JSON-decoded, with ``None`` for a key
        that does not exist. If the answer holds a write that depends on a
        write of another key asked for, it holds that write or a later one.
        At most 1 000 keys.
        """
        body = self._call("POST", "/kv-store/read", {"keys": list(keys)}, key_operation=False)
        values: dict[str, Any] = {}
        for entry in body.get("values", []):
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                values[entry["key"]] = entry.get("value") if entry.get("doesExist") else None
        return values

    def delete(self, key: str) -> None:
        """Deletes ``key``; raises ``KeyNotFound`` when it does not exist."""
        self._call("DELETE", _key_path(key), {})

    def key_count(self) -> int:
        """The number of live keys in the shard of the node that answers."""
        body = self._call("GET", "/kv-store/key-count", {}, key_operation=False)
        return int(body.get("key-count", 0))

    def shards(self) -> list[int]:
        """The ids of the cluster's shards."""
        body = self._call("GET", "/kv-store/shards", {}, key_operation=False)
        return [int(s) for s in body.get("shards", [])]
