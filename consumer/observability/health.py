"""One HTTP port for operators: `/metrics`, `/healthz` (poll loop alive), `/readyz` (restored).

`/metrics` goes through prometheus_client's exposition: the Prometheus text format, or
OpenMetrics when the scraper asks for it (`Accept`), as Prometheus does for exemplars and
created timestamps. `post_routes` mounts request handlers on the same port (the inbound
push endpoint).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

from consumer.observability.metrics import Metrics

# A POST route: reads the request it is given, returns the status and a one-line answer.
PostRoute = Callable[[BaseHTTPRequestHandler], tuple[int, str]]


class OpsServer:
    """Serves the metrics registry and the two probes on a background thread."""

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        *,
        host: str = "0.0.0.0",
        port: int = 9000,
        stale_after_s: float = 60.0,
        post_routes: Mapping[str, PostRoute] | None = None,
    ) -> None:
        self.metrics = metrics
        routes = dict(post_routes or {})
        self._ready = ready
        self._stale_after = stale_after_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # a client that stops sending mid-request frees its thread

            def do_POST(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, b"not found", "text/plain")
                    return
                status, text = route(self)
                self._send(status, text.encode() + b"\n", "text/plain; charset=utf-8")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._send(200, encode(server.metrics.registry), content_type)
                elif path == "/healthz":
                    alive, why = server.alive()
                    self._send(200 if alive else 503, why.encode(), "text/plain")
                elif path == "/readyz":
                    ok = server._ready()
                    self._send(
                        200 if ok else 503,
                        b"ready" if ok else b"not ready: not assigned or restoring",
                        "text/plain",
                    )
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the logs

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ops-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._httpd.server_address[1])

    def alive(self) -> tuple[bool, str]:
        """The poll loop ran within `stale_after_s`."""
        last = self.metrics.registry.get_sample_value(
            "imconnector_poll_loop_last_seen_timestamp_seconds"
        )
        if not last:
            return True, "starting"
        age = time.time() - last
        if age > self._stale_after:
            return False, f"poll loop silent for {age:.0f}s"
        return True, "ok"

    def start(self) -> OpsServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()
