"""The asyncio network backend (consumer.bitrix.netio) against real loopback servers.

Each test runs a small HTTP/1.1 server on 127.0.0.1 (plain or TLS) in the test's own loop
and talks to it through httpx or httpcore on `AsyncioBackend`: keep-alive reuse, large
bodies both ways (flow control), TLS, a connection the server closed while idle, and how
failures map to the service's error classes (before the request left or after).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpcore
import httpx
import pytest
import trustme

from consumer.bitrix.classify import classify_transport
from consumer.bitrix.client import http_client
from consumer.bitrix.netio import AsyncioBackend
from consumer.errors import AmbiguousError, TransientError
from consumer.settings import HttpSettings


@dataclass
class Server:
    """Answers each request with `body`; `mode` picks a misbehaviour."""

    body: bytes = b'{"result":true}'
    mode: str = "ok"  # ok | close-after | silent | reset
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    request_lines: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.request_lines.append(head.split(b"\r\n", 1)[0])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(await reader.readexactly(length))
                if self.mode == "silent":
                    await reader.read()  # never answers; waits for the client to go
                    return
                if self.mode == "reset":
                    writer.transport.abort()
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(self.body), self.body)
                )
                await writer.drain()
                if self.mode == "close-after":  # an idle timeout on the portal's side
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()  # the socket is closed: the FIN is on its way
            self.closed.set()


async def serve(
    server: Server,
    test: Callable[[str], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
) -> None:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    async with listener:
        await test(f"{scheme}://localhost:{port}/rest/")


def client(**settings: float) -> httpx.AsyncClient:
    return http_client(HttpSettings(max_connections=4, **settings))


def _backend(client: httpx.AsyncClient) -> object:
    transport = client._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    return transport._pool._network_backend


def test_the_service_client_uses_the_asyncio_backend_unless_told_otherwise():
    assert isinstance(_backend(http_client(HttpSettings())), AsyncioBackend)
    fallback = http_client(HttpSettings(network_backend="anyio"))
    assert not isinstance(_backend(fallback), AsyncioBackend)


def test_a_proxy_from_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch):
    server = Server(body=b'{"result":"via proxy"}')

    async def test(url: str) -> None:
        monkeypatch.setenv("HTTP_PROXY", url.replace("localhost", "127.0.0.1"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with client() as http:
            response = await http.post("http://portal.invalid/rest/profile", content=b"{}")
            assert response.content == b'{"result":"via proxy"}'

    asyncio.run(serve(server, test))
    # An absolute URL in the request line: the request went to the proxy, not the portal.
    assert server.request_lines == [b"POST http://portal.invalid/rest/profile HTTP/1.1"]


def test_requests_share_one_kept_alive_connection_and_large_bodies_pass_both_ways():
    big_response = b'{"result":"' + b"x" * 3_000_000 + b'"}'  # above the read high-water mark
    big_request = b"y" * 500_000  # several flushes of gathered writes
    server = Server(body=big_response)

    async def test(url: str) -> None:
        async with client() as http:
            for index in range(3):
                content = big_request if index == 1 else b"{}"
                response = await http.post(url, content=content)
                assert response.status_code == 200
                assert response.content == big_response

    asyncio.run(serve(server, test))
    assert server.connections == 1
    assert server.requests == [b"{}", big_request, b"{}"]


def test_tls_with_a_verified_certificate():
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = Server(body=b'{"result":"over tls"}')

    async def test(url: str) -> None:
        async with httpcore.AsyncConnectionPool(
            ssl_context=client_ctx, network_backend=AsyncioBackend()
        ) as pool:
            for _ in range(2):
                response = await pool.request("POST", url, content=b"{}")
                assert response.status == 200
                assert response.content == b'{"result":"over tls"}'

    asyncio.run(serve(server, test, tls=server_ctx))
    assert server.connections == 1


def test_an_untrusted_certificate_is_a_connect_error():
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = Server()

    async def test(url: str) -> None:
        async with client() as http:  # trusts the system CAs only
            with pytest.raises(httpx.ConnectError) as caught:
                await http.post(url, content=b"{}")
        assert isinstance(classify_transport(caught.value), TransientError)

    asyncio.run(serve(server, test, tls=server_ctx))
    assert server.requests == []


def test_a_connection_the_portal_closed_while_idle_is_not_reused():
    server = Server(mode="close-after")

    async def test(url: str) -> None:
        async with client() as http:
            assert (await http.post(url, content=b"1")).status_code == 200
            await server.closed.wait()
            # On loopback the FIN is in the client's socket by now; its read callback runs
            # in the loop iteration this yield gives. The pool must then see the idle
            # connection as expired (no `poll` asks the kernel) and open a new one.
            await asyncio.sleep(0)
            assert (await http.post(url, content=b"2")).status_code == 200

    asyncio.run(serve(server, test))
    assert server.connections == 2
    assert server.requests == [b"1", b"2"]


def test_end_of_stream_makes_a_stream_readable_and_reads_empty():
    server = Server(mode="close-after")

    async def test(url: str) -> None:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        stream = await AsyncioBackend().connect_tcp("localhost", port, timeout=5)
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("server_addr")[1] == port
        await stream.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        received = b""
        while not received.endswith(server.body):
            received += await stream.read(65536, timeout=5)
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert await stream.read(65536, timeout=5) == b""  # the server closed: end of stream
        assert stream.get_extra_info("is_readable") is True
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"more")
        await stream.aclose()

    asyncio.run(serve(server, test))


def test_no_answer_is_a_read_timeout_and_ambiguous():
    server = Server(mode="silent")

    async def test(url: str) -> None:
        async with client(read_timeout_s=0.3) as http:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await http.post(url, content=b"sent")
        assert isinstance(classify_transport(caught.value), AmbiguousError)

    asyncio.run(serve(server, test))
    assert server.requests == [b"sent"]  # it did leave: that is why it is ambiguous


def test_a_reset_after_the_request_left_is_ambiguous():
    server = Server(mode="reset")

    async def test(url: str) -> None:
        async with client() as http:
            with pytest.raises(httpx.TransportError) as caught:
                await http.post(url, content=b"sent")
        assert isinstance(classify_transport(caught.value), AmbiguousError)

    asyncio.run(serve(server, test))
    assert server.requests == [b"sent"]


def test_a_refused_connection_is_safe_to_retry():
    async def test() -> None:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        async with client() as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.post(f"http://127.0.0.1:{port}/rest/", content=b"{}")
        assert isinstance(classify_transport(caught.value), TransientError)

    asyncio.run(test())


def test_a_unix_socket_portal(tmp_path):
    server = Server(body=b'{"result":"over a unix socket"}')
    path = str(tmp_path / "portal.sock")

    async def test() -> None:
        listener = await asyncio.start_unix_server(server.handle, path)
        async with (
            listener,
            httpcore.AsyncConnectionPool(uds=path, network_backend=AsyncioBackend()) as pool,
        ):
            response = await pool.request("POST", "http://portal/rest/x", content=b"{}")
            assert response.content == b'{"result":"over a unix socket"}'

    asyncio.run(test())
    assert server.requests == [b"{}"]


def test_a_missing_unix_socket_is_a_connect_error(tmp_path):
    async def test() -> None:
        with pytest.raises(httpcore.ConnectError, match="nothing-here"):
            await AsyncioBackend().connect_unix_socket(str(tmp_path / "nothing-here"), timeout=1)

    asyncio.run(test())
