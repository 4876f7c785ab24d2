"""An asyncio-native network backend for httpcore: fewer system calls per request.

httpx on asyncio goes through anyio, which costs a few system calls per request beyond the
send and the receive: `getpeername` each time the stream's attributes are looked up and a
`poll` to see whether an idle pooled connection was closed by the portal. Each system call
lets go of the GIL, and in this service the engine thread is waiting for it: getting it
back costs the dispatcher up to a switch interval (5 ms) every time, so requests took
several times longer than the portal needed, and the request slots, not the CPU, set the
pace. This backend asks the kernel only to send and to receive:

- writes are gathered and leave in one `send` when the response is first read (an HTTP/1.1
  request is always written whole before its response is read);
- whether an idle connection was closed is known from the protocol's callbacks (end of
  stream, or data nobody asked for), not from a `poll`;
- addresses come from what asyncio recorded at connect time.

It implements httpcore's `AsyncNetworkBackend` interface (TCP, TLS via `loop.start_tls`,
Unix sockets) and raises httpcore's own exception types, so httpx maps them as usual:
`ConnectError`/`ConnectTimeout` before the request left, `ReadError`/`ReadTimeout`/
`WriteError` after (see `consumer.bitrix.classify.classify_transport`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

# (level, option, value) as httpcore passes them; asyncio sets TCP_NODELAY itself.
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

_READ_HIGH_WATER = 1 << 20  # stop reading from the socket while this much waits unread
_FLUSH_AT = 1 << 16  # gathered writes beyond this leave at once


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader or writer waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: HTTP/1.1 does not half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _woken(protocol: _Protocol, *, writer: bool, timeout: float | None) -> None:
    """Wait for the protocol to wake its reader (or writer); TimeoutError after `timeout`."""
    future = asyncio.get_running_loop().create_future()
    if writer:
        protocol.drained = future
    else:
        protocol.waiter = future
    if timeout is None:
        await future
        return
    handle = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        handle.cancel()


class AsyncioStream(AsyncNetworkStream):
    """One connection: a transport plus the `_Protocol` buffering its input."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if self._pending:
            await self._flush(timeout)
        if not protocol.buffer and not protocol.eof:
            try:
                await _woken(protocol, writer=False, timeout=timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading the response") from None
        buffer = protocol.buffer
        if not buffer:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
            return b""  # end of stream: httpcore treats it as the server disconnecting
        data = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
        if protocol.reading_paused and len(buffer) < _READ_HIGH_WATER // 2:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size >= _FLUSH_AT:
            await self._flush(timeout)

    async def _flush(self, timeout: float | None) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(data)
        if protocol.writing_paused:
            try:
                await _woken(protocol, writer=True, timeout=timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out sending the request") from None
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error))

    async def aclose(self) -> None:
        self._pending = []
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        if self._pending:
            await self._flush(timeout)
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self._protocol,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from None
        if transport is None:  # pragma: no cover - only for protocols without TLS support
            raise httpcore.ConnectError("TLS is not available on this connection")
        assert isinstance(transport, asyncio.Transport)
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":
            # An idle pooled connection is unusable once the peer closed it or sent bytes
            # nobody asked for: both arrive through the protocol, no system call needed.
            return self._protocol.eof or bool(self._protocol.buffer)
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore network backend on plain asyncio transports (see the module)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        opening = loop.create_connection(_Protocol, host, port, local_addr=local)
        return await _connect(opening, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        opening = asyncio.get_running_loop().create_unix_connection(_Protocol, path)
        return await _connect(opening, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    opening: Coroutine[Any, Any, tuple[asyncio.Transport, _Protocol]],
    where: str,
    timeout: float | None,
    options: Iterable[SocketOption] | None,
) -> AsyncioStream:
    try:
        transport, protocol = await asyncio.wait_for(opening, timeout)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"timed out connecting to {where}") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot connect to {where}: {exc}") from None
    _apply_options(transport, options)
    return AsyncioStream(transport, protocol)


def _apply_options(transport: asyncio.Transport, options: Iterable[SocketOption] | None) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in options or ():
        sock.setsockopt(*option)
