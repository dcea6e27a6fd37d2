"""Tests of the causalkv Python client: against a real node (the binary named
by CAUSALKV_BIN) and against small local HTTP stubs for the retry and
routing rules. Standard library only:

    CAUSALKV_BIN=target/debug/causalkv PYTHONPATH=clients/python \\
        python3 -m unittest discover -s clients/python/tests -v
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from typing import Any, Dict, Tuple

import causalkv
from causalkv import BadRequest, CausalKVError, Client, KeyNotFound, Unauthorized, Unavailable
from causalkv.client import MAX_RETRY_WAIT, _retry_wait
from causalkv.errors import error_for

START_DEADLINE = 30.0
STOP_DEADLINE = 10.0
POLL = 0.02


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One real causalkv node that is its whole view, on a port the system chose (PORT=0)."""

    def __init__(self, binary: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="causalkv-py-")
        port_file = os.path.join(self.tmp, "port")
        env = {
            "PORT": "0",
            "PORT_FILE": port_file,
            "DATA_DIR": os.path.join(self.tmp, "data"),
            "RUST_LOG": "warn",
        }
        self.stderr_path = os.path.join(self.tmp, "stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + START_DEADLINE
        while not os.path.exists(port_file):
            self._check_alive(deadline, "write PORT_FILE")
            time.sleep(POLL)
        with open(port_file) as f:
            self.addr = f.read().strip()
        self.url = f"http://{self.addr}"
        while not self._ready():
            self._check_alive(deadline, "answer /ready")
            time.sleep(POLL)

    def _check_alive(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"causalkv exited ({self.proc.returncode}) before it could {what}: {self.stderr()}")
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"causalkv did not {what} within {START_DEADLINE} s: {self.stderr()}")

    def _ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + "/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_DEADLINE; the exit status (None when killed)."""
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            code = self.proc.returncode
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code


def causalkv_bin() -> str:
    binary = os.environ.get("CAUSALKV_BIN", "")
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"CAUSALKV_BIN must name the causalkv binary (got {binary!r}): "
            "cargo build --bin causalkv; CAUSALKV_BIN=target/debug/causalkv"
        )
    return binary


class RealNodeTest(unittest.TestCase):
    """The client against a real one-node cluster, a fresh node per test."""

    node: Node

    def setUp(self) -> None:
        self.node = Node(causalkv_bin())
        self.stopped = False
        self.client = Client(self.node.addr, timeout=10.0)
        self.session = self.client.session()

    def tearDown(self) -> None:
        code = self.node.stop()
        self.assertEqual(code, 0, f"the node did not stop cleanly on SIGTERM: {self.node.stderr()}")

    def test_typed_values_round_trip(self) -> None:
        values: dict[str, Any] = {
            "dict": {"name": "Ada", "n": 1, "nested": {"ok": True, "list": [1, 2.5, "x", None]}},
            "list": [1, "two", 3.0, False, {"k": []}],
            "unicode": "héllo wörld ✓ 日本語 🙂",
            "int": 42,
            "negative": -7,
            "float": 3.25,
            "bool": False,
        }
        for key, value in values.items():
            self.assertTrue(self.session.put(key, value), key)
        other = self.client.session(self.session.context)
        for key, value in values.items():
            got = other.get(key)
            self.assertEqual(got, value, key)
            self.assertIs(type(got), type(value), key)
        # The API stores no null and no empty string: the node refuses them.
        for refused in (None, ""):
            with self.assertRaises(BadRequest) as caught:
                self.session.put("refused", refused)
            self.assertEqual(caught.exception.status, 400)
            self.assertEqual(caught.exception.body["error"], "Value is missing")
        self.assertIsNone(self.session.get("refused", default=None))

    def test_get_many_reads_a_snapshot(self) -> None:
        self.session.put("profile", {"name": "Ada"})
        self.session.put("photos", [1, 2])
        values = self.session.get_many(["profile", "photos", "nothing", "profile"])
        self.assertEqual(values, {"profile": {"name": "Ada"}, "photos": [1, 2], "nothing": None})
        with self.assertRaises(BadRequest):
            self.session.get_many([])

    def test_put_tells_created_from_replaced(self) -> None:
        self.assertIs(self.session.put("k", "one"), True)
        self.assertIs(self.session.put("k", "two"), False)
        self.assertEqual(self.session.get("k"), "two")
        self.session.delete("k")
        self.assertIs(self.session.put("k", "three"), True, "a key whose last write was a delete is created again")

    def test_missing_key(self) -> None:
        with self.assertRaises(KeyNotFound) as caught:
            self.session.get("absent")
        self.assertEqual(caught.exception.status, 404)
        self.assertIsInstance(caught.exception, CausalKVError)
        self.assertEqual(self.session.get("absent", default="fallback"), "fallback")
        self.assertIsNone(self.session.get("absent", default=None))
        with self.assertRaises(KeyNotFound):
            self.session.delete("absent")

    def test_delete(self) -> None:
        self.session.put("gone", {"a": 1})
        self.session.delete("gone")
        with self.assertRaises(KeyNotFound):
            self.session.get("gone")
        self.assertEqual(self.session.get("gone", default=0), 0)
        with self.assertRaises(KeyNotFound):
            self.session.delete("gone")

    def test_context_grows_with_each_write_and_survives_errors(self) -> None:
        self.assertEqual(self.session.context, {})
        seqs: list[int] = []
        for i in range(3):
            self.session.put(f"c{i}", i)
            clock = self.session.context.get("clock", {})
            seqs.append(clock.get(self.node.addr, 0))
        self.assertEqual(seqs, [1, 2, 3], f"context after each write: {self.session.context}")
        before = self.session.context
        with self.assertRaises(BadRequest):
            self.session.put("x" * 51, 1)
        self.assertEqual(self.session.context, before, "an error answer's empty context must not replace the session's")
        self.assertEqual(self.session.key_count(), 3)
        self.assertEqual(self.session.context, before, "key-count echoes the context")
        # The context is the session's own copy.
        self.session.context["clock"] = {}
        self.assertEqual(self.session.context, before)

    def test_key_count_and_shards(self) -> None:
        self.assertEqual(self.session.key_count(), 0)
        for i in range(4):
            self.session.put(f"n{i}", i)
        self.assertEqual(self.session.key_count(), 4)
        self.assertEqual(self.session.shards(), [1])

    def test_keys_are_percent_encoded(self) -> None:
        for key in ("a b?c#d%e+f&g=h", "ключ", "日本", "%41", "a.b", ".."):
            self.assertTrue(self.session.put(key, key), key)
            self.assertEqual(self.session.get(key), key, key)
        self.assertEqual(self.session.key_count(), 6, "each key is its own key (none decoded into another)")
        with self.assertRaises(BadRequest) as caught:
            self.session.put("a/b", 1)
        self.assertEqual(caught.exception.body["error"], "Key is invalid")

    def test_too_long_key_is_a_bad_request(self) -> None:
        self.assertTrue(self.session.put("k" * 50, 1))
        with self.assertRaises(BadRequest) as caught:
            self.session.put("k" * 51, 1)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.body["error"], "Key is too long")
        with self.assertRaises(BadRequest):
            self.session.get("k" * 51)

    def test_a_node_that_refuses_the_connection_is_skipped(self) -> None:
        client = Client([f"127.0.0.1:{closed_port()}", self.node.url])
        session = client.session()
        for i in range(4):  # each request starts at the next node: both orders are met
            self.assertTrue(session.put(f"r{i}", i))
            self.assertEqual(session.get(f"r{i}"), i)
        with self.assertRaises(Unavailable) as caught:
            Client(f"127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}").session().get("r0")
        self.assertIsNone(caught.exception.status)
        self.assertIn("refused", str(caught.exception))

    def test_view_change_to_the_current_view(self) -> None:
        self.session.put("v", 1)
        shards = self.client.view_change([self.node.addr], repl_factor=1)
        self.assertEqual(shards, [{"shard-id": 1, "key-count": 1, "replicas": [self.node.addr]}])
        with self.assertRaises(BadRequest):
            self.client.view_change([self.node.addr], repl_factor=2)
        self.assertEqual(self.session.get("v"), 1)


Reply = Tuple[int, Dict[str, str], Any]


class Stub:
    """A local HTTP server that answers from a script (the last reply
    repeats) and records every request: method, path, headers, JSON body."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with stub.lock:
                    stub.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": json.loads(raw) if raw else None,
                        }
                    )
                    status, headers, body = stub.replies[0] if len(stub.replies) == 1 else stub.replies.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


UNAVAILABLE: Any = {"message": "Error in GET", "error": "Unable to satisfy request", "causal-context": {}}


class StubTest(unittest.TestCase):
    """Retry, routing and error rules, against local stubs."""

    def stub(self, replies: list[Reply]) -> Stub:
        stub = Stub(replies)
        self.addCleanup(stub.close)
        return stub

    def test_503_is_retried_until_an_answer(self) -> None:
        found = {"message": "Retrieved successfully", "value": 7, "causal-context": {"clock": {"n": 3}, "epoch": 0}}
        stub = self.stub([(503, {"Retry-After": "0"}, UNAVAILABLE)] * 2 + [(200, {}, found)])
        session = Client(stub.url, retries=5).session()
        started = time.monotonic()
        self.assertEqual(session.get("k"), 7)
        self.assertLess(time.monotonic() - started, MAX_RETRY_WAIT, "Retry-After: 0 means no wait")
        self.assertEqual(len(stub.requests), 3)
        self.assertEqual(session.context, {"clock": {"n": 3}, "epoch": 0})
        self.assertEqual([r["path"] for r in stub.requests], ["/kv-store/keys/k"] * 3)

    def test_always_503_raises_unavailable_after_the_budget(self) -> None:
        stub = self.stub([(503, {"Retry-After": "0"}, UNAVAILABLE)])
        session = Client(stub.url, retries=3).session()
        with self.assertRaises(Unavailable) as caught:
            session.put("k", 1)
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(caught.exception.body["error"], "Unable to satisfy request")
        self.assertEqual(len(stub.requests), 4, "one request and 3 retries")
        self.assertEqual(session.context, {}, "a 503 does not replace the context")

    def test_retry_after_is_waited_for(self) -> None:
        found = {"value": "v", "causal-context": {}}
        stub = self.stub([(503, {"Retry-After": "1"}, UNAVAILABLE), (200, {}, found)])
        started = time.monotonic()
        self.assertEqual(Client(stub.url).session().get("k"), "v")
        self.assertGreaterEqual(time.monotonic() - started, 0.95)
        self.assertEqual(len(stub.requests), 2)

    def test_retry_wait_rules(self) -> None:
        self.assertEqual(_retry_wait("0", 0), 0.0)
        self.assertEqual(_retry_wait("1", 0), 1.0)
        self.assertEqual(_retry_wait("1.5", 3), 1.5)
        self.assertEqual(_retry_wait("120", 0), MAX_RETRY_WAIT, "each wait is capped at 2 s")
        self.assertEqual(_retry_wait("-3", 0), 0.0)
        self.assertEqual(_retry_wait("Wed, 21 Oct 2015 07:28:00 GMT", 0), 0.0, "a date in the past: no wait")
        self.assertEqual(_retry_wait(None, 0), 0.1)
        self.assertEqual(_retry_wait("soon", 1), 0.2)
        self.assertEqual(_retry_wait(None, 10), MAX_RETRY_WAIT)

    def test_requests_go_round_robin(self) -> None:
        ok: Reply = (200, {}, {"shards": [1, 2], "causal-context": {}})
        a, b = self.stub([ok]), self.stub([ok])
        session = Client(f"{a.url},{b.url}").session()
        for _ in range(4):
            self.assertEqual(session.shards(), [1, 2])
        self.assertEqual((len(a.requests), len(b.requests)), (2, 2))

    def test_503_retries_move_to_the_next_node(self) -> None:
        found = {"value": 1, "causal-context": {}}
        busy = self.stub([(503, {"Retry-After": "0"}, UNAVAILABLE)])
        fine = self.stub([(200, {}, found)])
        self.assertEqual(Client([busy.url, fine.url], retries=1).session().get("k"), 1)
        self.assertEqual((len(busy.requests), len(fine.requests)), (1, 1))

    def test_session_sends_its_context_and_percent_encodes_keys(self) -> None:
        stub = self.stub([(201, {}, {"replaced": False, "causal-context": {"clock": {"a": 1}, "epoch": 2}})])
        session = Client(stub.url.replace("http://", "")).session({"clock": {"z": 9}, "epoch": 2})
        self.assertTrue(session.put("a b/ü", [1]))
        self.assertTrue(session.put("k", {"x": None}))
        first, second = stub.requests
        self.assertEqual(first["method"], "PUT")
        self.assertEqual(first["path"], "/kv-store/keys/a%20b%2F%C3%BC")
        self.assertEqual(first["headers"]["Content-Type"], "application/json")
        self.assertEqual(first["body"], {"value": [1], "causal-context": {"clock": {"z": 9}, "epoch": 2}})
        self.assertEqual(second["body"], {"value": {"x": None}, "causal-context": {"clock": {"a": 1}, "epoch": 2}})

    def test_view_change_sends_the_admin_token(self) -> None:
        shards = [{"shard-id": 1, "key-count": 0, "replicas": ["a:1"]}]
        stub = self.stub([(200, {}, {"message": "View change successful", "shards": shards, "causal-context": {}})])
        self.assertEqual(Client(stub.url, admin_token="s3cret").view_change(["a:1", "b:2"], repl_factor=2), shards)
        self.assertEqual(Client(stub.url).view_change("a:1, b:2"), shards)
        with_token, without = stub.requests
        self.assertEqual(with_token["method"], "PUT")
        self.assertEqual(with_token["path"], "/kv-store/view-change")
        self.assertEqual(with_token["headers"].get("Authorization"), "Bearer s3cret")
        self.assertEqual(with_token["body"], {"view": ["a:1", "b:2"], "repl-factor": 2})
        self.assertNotIn("Authorization", without["headers"])
        self.assertEqual(without["body"], {"view": ["a:1", "b:2"]})

    def test_unauthorized(self) -> None:
        denied = {"message": "Error in VIEW-CHANGE", "error": "Unauthorized", "causal-context": {}}
        stub = self.stub([(401, {"WWW-Authenticate": "Bearer"}, denied)])
        with self.assertRaises(Unauthorized) as caught:
            Client(stub.url, admin_token="wrong").view_change(["a:1"])
        self.assertEqual(caught.exception.status, 401)
        self.assertEqual(len(stub.requests), 1, "a 401 is not retried")

    def test_error_classes(self) -> None:
        self.assertIsInstance(error_for(404, {}, key_operation=True), KeyNotFound)
        self.assertNotIsInstance(error_for(404, {}), KeyNotFound)
        self.assertIsInstance(error_for(403, {}), Unauthorized)
        self.assertIsInstance(error_for(413, {"error": "Value is too large"}), BadRequest)
        self.assertIsInstance(error_for(503, {}), Unavailable)
        plain = error_for(500, "boom")
        self.assertIs(type(plain), CausalKVError)
        self.assertEqual((plain.status, plain.body), (500, "boom"))
        for cls in (KeyNotFound, Unavailable, BadRequest, Unauthorized):
            self.assertTrue(issubclass(cls, CausalKVError))
        self.assertEqual(
            sorted(causalkv.__all__),
            sorted(
                ["Client", "Session", "JSONValue", "CausalKVError", "KeyNotFound", "Unavailable", "BadRequest", "Unauthorized"]
            ),
        )

    def test_node_addresses(self) -> None:
        client = Client(" 127.0.0.1:1 , http://127.0.0.1:2/,https://h:3")
        self.assertEqual(client.nodes, ["http://127.0.0.1:1", "http://127.0.0.1:2", "https://h:3"])
        bad_nodes: list[Any] = ["", " , ", []]
        for bad in bad_nodes:
            with self.assertRaises(ValueError):
                Client(bad)
        with self.assertRaises(ValueError):
            Client("ftp://h:1")
        with self.assertRaises(ValueError):
            Client("h:1").session().get("")

    def test_timeout_raises_unavailable(self) -> None:
        # A server that accepts the connection and never answers.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = Client(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        with self.assertRaises(Unavailable) as caught:
            client.session().get("k")
        self.assertIsNone(caught.exception.status)
        self.assertIn("no answer within", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
