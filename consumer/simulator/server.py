"""The simulator's HTTP transport: Bitrix24 REST, OAuth token endpoint, /_sim admin and /registry.

A stdlib `ThreadingHTTPServer` with keep-alive; all behaviour lives in Portal and
SchemaRegistry, this module only parses requests and acts out transport faults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from consumer.simulator.clock import Clock
from consumer.simulator.config import SimulatorConfig
from consumer.simulator.params import parse_body, parse_form, upper_keys
from consumer.simulator.portal import Portal, RestReply
from consumer.simulator.registry import CONTENT_TYPE as REGISTRY_CONTENT_TYPE
from consumer.simulator.registry import SchemaRegistry

logger = logging.getLogger("consumer.simulator")

MAX_BODY = 32 * 1024 * 1024
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
POLL_INTERVAL = 0.02  # how soon stop() takes effect; an idle select loop costs next to nothing


def _json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON; orjson is several times faster than `json` on the large answers
    of a batch of 50 messages. Integer keys become strings, as `json` and PHP make them."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # e.g. an integer past 64 bits: `json` writes it as it is
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _HTTPServer(ThreadingHTTPServer):
    """Tracks open connections so stop() can cut keep-alive clients off."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], portal: Portal, registry: SchemaRegistry) -> None:
        self.portal = portal
        self.registry = registry
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Bitrix24Simulator/1.0"
    disable_nagle_algorithm = True  # small JSON answers must not wait for delayed ACKs
    timeout = 300  # idle keep-alive connections eventually free their thread
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The query may carry `auth=` and a webhook path carries its secret code: log the
        # method (last path segment) for REST calls and the bare path otherwise.
        del size
        path = urlsplit(self.path).path
        if path.startswith("/rest/"):
            path = "/rest/" + path.rstrip("/").rsplit("/", 1)[-1]
        logger.debug("%s %s -> %s", self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        # Stdlib messages quote the raw request line (tokens in the query); never log them.
        del format, args

    # -- plumbing -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            url = urlsplit(self.path)
            body = self._read_body()
            path = url.path
            if path.startswith("/rest/"):
                self._rest(path[len("/rest/") :], url.query, body)
            elif path.rstrip("/") == "/oauth/token":
                self._token(url.query, body)
            elif path == "/registry" or path.startswith("/registry/"):
                status, payload = self.server.registry.route(
                    self.command,
                    path[len("/registry") :],
                    body,
                    self.headers.get("Authorization", ""),
                )
                self._send_json(status, payload, REGISTRY_CONTENT_TYPE)
            elif path.startswith("/_sim/"):
                self._admin(path[len("/_sim/") :].rstrip("/"), url.query, body)
            else:
                self._send_json(404, {"error": "NOT_FOUND", "error_description": "No such path"})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            logger.exception("simulator failed on %s %s", self.command, urlsplit(self.path).path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(
                    500, {"error": "INTERNAL_SERVER_ERROR", "error_description": "Simulator error"}
                )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any, content_type: str = JSON_CONTENT_TYPE) -> None:
        data = _json_bytes(payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _params(self, query: str, body: bytes) -> dict[str, Any]:
        params = parse_form(query) if query else {}
        params.update(parse_body(self.headers.get("Content-Type", ""), body))
        return params

    # -- routes ---------------------------------------------------------------------------

    def _rest(self, rest_path: str, query: str, body: bytes) -> None:
        segments = [s for s in rest_path.split("/") if s]
        # Webhook form /rest/<user id>/<code>/<method>: imconnector.* refuses it (403).
        webhook = len(segments) == 3 and segments[0].isdigit()
        method = segments[-1] if segments else ""
        for suffix in (".json", ".xml"):
            method = method.removesuffix(suffix)
        params = upper_keys(self._params(query, body))
        authorization = self.headers.get("Authorization", "")
        bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        portal = self.server.portal
        delay = portal.latency_for(method)
        if delay > 0:
            self.server.stopping.wait(delay)
        reply = portal.handle_rest(method, params, bearer, webhook=webhook)
        self._answer(reply)

    def _answer(self, reply: RestReply) -> None:
        if reply.transport_fault == "hang":
            # Hold the request, then drop the connection without a word.
            self.server.stopping.wait(reply.hang_seconds)
            self.close_connection = True
            return
        if reply.transport_fault == "reset":
            # SO_LINGER(1, 0) turns close() into a TCP RST instead of an orderly FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self._send_json(reply.status, reply.body)

    def _token(self, query: str, body: bytes) -> None:
        params = {str(k).lower(): v for k, v in self._params(query, body).items()}
        flat = {k: v for k, v in params.items() if isinstance(v, str)}
        status, payload = self.server.portal.handle_token(flat)
        self._send_json(status, payload)

    def _admin(self, route: str, query: str, body: bytes) -> None:
        portal = self.server.portal
        verb = self.command
        request: dict[str, Any] = {}
        if body:
            try:
                decoded = json.loads(body)
            except ValueError:
                self._send_json(400, {"error": "bad_request", "error_description": "JSON expected"})
                return
            request = decoded if isinstance(decoded, dict) else {}
        query_args = dict(parse_qsl(query))
        try:
            if route == "calls" and verb == "GET":
                since = int(query_args.get("since", 0))
                records = portal.call_records(since, query_args.get("method"))
                self._send_json(200, {"calls": [record.as_dict() for record in records]})
            elif route == "state" and verb == "GET":
                self._send_json(200, portal.state())
            elif route == "reset" and verb == "POST":
                portal.reset()
                self._send_json(200, {"reset": True})
            elif route == "tokens" and verb == "POST":
                self._send_json(200, portal.issue_tokens())
            elif route == "expire-tokens" and verb == "POST":
                self._send_json(200, {"expired": portal.expire_tokens()})
            elif route == "faults":
                settings = portal.update_faults(request) if verb == "POST" else None
                self._send_json(200, settings or portal.fault_settings().as_dict())
            elif route == "limits":
                limits = portal.update_limits(request) if verb == "POST" else portal.limits()
                self._send_json(200, limits)
            elif route == "operator-message" and verb == "POST":
                chat_id = int(request.get("chat_id", 0))
                self._send_json(200, portal.post_operator_message(chat_id, str(request["text"])))
            elif route == "operator-answer" and verb == "POST":
                # Like operator-message, and raises OnImConnectorMessageAdd (events.py).
                chat = request.get("chat_id")
                answered = portal.operator_answer(
                    None if chat is None else int(chat),
                    str(request["text"]),
                    int(request.get("author_id", 1)),
                )
                self._send_json(200 if answered else 404, answered or {"error": "NO_WAITING_CHAT"})
            elif route == "events" and verb == "GET":
                with portal.lock:
                    snapshot = portal.events.snapshot()
                self._send_json(200, snapshot)
            else:
                self._send_json(404, {"error": "NOT_FOUND", "error_description": route})
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(400, {"error": "bad_request", "error_description": str(exc)})


class SimulatorServer:
    """A Bitrix24 portal (plus a schema registry) on a real socket.

    >>> with SimulatorServer(SimulatorConfig(preset_lines=[("demo", 1)])) as sim:
    ...     tokens = sim.issue_tokens()
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Clock | None = None
    ) -> None:
        self.config = config or SimulatorConfig()
        self.portal = Portal(self.config, clock=clock)
        self.registry = SchemaRegistry()
        self._httpd = _HTTPServer((self.config.host, self.config.port), self.portal, self.registry)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.portal.base_url = self.url
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def registry_url(self) -> str:
        return f"{self.url}/registry"

    def issue_tokens(self) -> dict[str, Any]:
        """A fresh token pair in the token-endpoint shape (seed a consumer with it)."""
        return self.portal.issue_tokens()

    def start(self) -> SimulatorServer:
        """Serve in a background daemon thread; returns self."""
        if self._stopped:
            raise RuntimeError("a stopped simulator cannot be restarted; create a new one")
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL},
                name=f"bitrix24-simulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() is called from another thread."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=POLL_INTERVAL)

    def stop(self) -> None:
        """Stop serving, wake hung requests and cut open connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.stopping.set()
        self.portal.events.close()
        if self._serving:  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
        self._httpd.drop_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
