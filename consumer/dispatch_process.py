"""Dispatch in a process of its own, so the engine's poll thread has its interpreter to itself.

In one process the HTTP stack (httpx, h11, asyncio: about 2 ms of Python per request) holds
a quarter of the GIL, and every hand-off between it and the poll thread can cost a switch
interval. Here the unchanged `Dispatcher` runs its asyncio loop on the main thread of a
child process, and `ProcessDispatcher` gives the engine the same surface over a socket pair.
Frames are a 4-byte length and JSON (the start message: a pickle, the child runs this very
code); calls go as their changelog bodies, which hold the request element:

    engine -> child  ("start", settings, memory_tokens, log format, log level)
                     ("submit", id, portal, connector, line, method, call bodies)
                     ("stop",)
    child -> engine  ("ready",) | ("failed", message)
                     ("done", id, results, relay)   results in the batch's call order
                     ("relay", relay)               metrics and portal status between dones

The child's metrics are recorded as operations (`MetricsRelay`) and applied to the engine's
registry, so `/metrics` stays one endpoint. The child dies with the engine (PR_SET_PDEATHSIG,
and it exits at end of stream), so no request leaves after the engine that planned it is
gone. If the child dies, the engine exits (`DispatchLost`): its calls in flight are marked
so in the changelog (the send ledger), and the restart treats them like after any crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from consumer.dispatch import BATCH_LIMIT, Batch, BatchDone, CallResult, Dispatcher
from consumer.errors import ConfigError, DispatchLost
from consumer.gctune import tune as tune_gc
from consumer.logs import logging_setup, setup_logging
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.state import PendingCall

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_START_TIMEOUT_S = 60.0
_SEND_TIMEOUT_S = 30.0
_RELAY_INTERVAL_S = 0.1
# What the dispatcher and the Bitrix24 client touch; nothing else may be relayed.
_RELAYED = frozenset(
    {
        "api_batch_size",
        "api_duration",
        "api_requests",
        "ambiguous_sends",
        "breaker_state",
        "retries",
        "throttle_waits",
        "token_refreshes",
    }
)
_OPS = frozenset({"inc", "dec", "set", "observe"})

# (metric operations, portal status or None): tuples in the child, JSON lists on arrival.
Relay = Sequence[Any]


def _frame(message: tuple[Any, ...] | list[Any]) -> bytes:
    """JSON, except the start message (it carries the `Settings` object)."""
    if message[0] == "start":
        data = b"P" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        data = b"J" + orjson.dumps(message)
    return _LENGTH.pack(len(data)) + data


def _submit_frame(rid: int, batch: Batch) -> bytes:
    """The calls go as their changelog bodies, already JSON (the element is field 4)."""
    head = orjson.dumps(["submit", rid, batch.portal, batch.connector, batch.line, batch.method])
    data = b"J" + head[:-1] + b",[" + b",".join(call.body() for _, call in batch.calls) + b"]]"
    return _LENGTH.pack(len(data)) + data


def _unframe(data: bytes | bytearray) -> list[Any]:
    if data[:1] == b"J":
        message: list[Any] = orjson.loads(memoryview(data)[1:])
        return message
    # Only ever the other end of our own socket pair, running this module.
    return list(pickle.loads(memoryview(data)[1:]))  # noqa: S301


# `python -c`, not `-m`: a module compiled by mypyc has no code object for `-m` to run.
_CHILD_MAIN = "import sys; from consumer.dispatch_process import main; sys.exit(main(sys.argv))"


class ProcessDispatcher:
    """The engine's side: `Dispatcher`'s surface, the requests in a child process."""

    def __init__(self, settings: Settings, metrics: Metrics, *, memory_tokens: bool = False):
        self._settings = settings
        self._metrics = metrics
        self._memory_tokens = memory_tokens
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._batches: dict[int, Batch] = {}
        self._next_id = 0
        self._gated: frozenset[str] = frozenset()
        self._refused: frozenset[str] = frozenset()
        self._breakers: dict[str, int] = {}
        self._lost: str | None = None
        self._early: list[list[Any]] = []  # what came in the same read as "ready"

    @property
    def pid(self) -> int | None:
        """The child's process id (for tests and logs)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def lost(self) -> bool:
        """True once the child is gone: nothing in flight will ever complete."""
        return self._lost is not None

    def start(self) -> None:
        """Spawn the child and wait until its HTTP client is built."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD_MAIN,
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._metrics.dispatch_pid = self._proc.pid
        self._send(("start", self._settings, self._memory_tokens, *logging_setup()))
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            messages = self._receive(max(0.0, deadline - time.monotonic()))
            for index, message in enumerate(messages):
                if message[0] == "ready":
                    logger.info("dispatch process %d ready", self._proc.pid)
                    self._early = messages[index + 1 :]  # for the first drain()
                    return
                if message[0] == "failed":
                    self.stop()
                    raise ConfigError(message[1])
            if time.monotonic() >= deadline:
                self.stop()
                raise DispatchLost(
                    f"the dispatch process did not start within {_START_TIMEOUT_S:.0f}s"
                )

    def submit(self, batch: Batch) -> None:
        """Send `batch` to the child; its `BatchDone` shows up in `drain()`."""
        self._next_id += 1
        self._batches[self._next_id] = batch
        self._metrics.calls_in_flight.inc(len(batch.calls))
        self._send_frame(_submit_frame(self._next_id, batch))

    def drain(self) -> list[BatchDone]:
        """Every finished batch since the last call (non-blocking)."""
        if self._early:
            early, self._early = self._early, []
            return self._handle(early + self._receive(0.0))
        return self._handle(self._receive(0.0))

    def wait(self, timeout: float) -> bool:
        """Block until the child reports or `timeout` passes; True if it did."""
        if self._lost is not None or self._sock is None:
            time.sleep(timeout)
            return False
        readable, _, _ = select.select([self._sock], [], [], timeout)
        return bool(readable)

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet drained."""
        return len(self._batches)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the child cancel what is left and exit; kill it after `timeout`."""
        proc, sock = self._proc, self._sock
        if proc is None:
            return
        if sock is not None and self._lost is None:
            with contextlib.suppress(OSError, DispatchLost):
                self._send(("stop",))
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("dispatch process %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait(timeout)
        if sock is not None:
            sock.close()
        self._sock = None
        self._metrics.dispatch_pid = None

    def portal_has_capacity(self, portal: str) -> bool:
        """False while a batch for `portal` waits on its limits (as the child last said)."""
        return portal not in self._gated

    def rename_batch_limit(self, portal: str) -> int:
        """How many `chat.name.set` calls of `portal` may share one request."""
        if self._settings.engine.batch_renames and portal not in self._refused:
            return BATCH_LIMIT
        return 1

    def breaker_states(self) -> dict[str, int]:
        """Portal -> breaker state, as the child last reported."""
        return dict(self._breakers)

    # -- the socket ----------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        self._send_frame(_frame(message))

    def _send_frame(self, frame: bytes) -> None:
        assert self._sock is not None
        view = memoryview(frame)
        deadline = time.monotonic() + _SEND_TIMEOUT_S
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                _, writable, _ = select.select([], [self._sock], [], max(0.0, left))
                if not writable:
                    self._give_up(f"has not read a request for {_SEND_TIMEOUT_S:.0f}s")
                continue
            except OSError as exc:
                self._give_up(f"is gone ({exc})")
            view = view[sent:]

    def _receive(self, timeout: float) -> list[list[Any]]:
        """Complete frames that arrived (waiting up to `timeout` for the first bytes)."""
        sock = self._sock
        if sock is None or self._lost is not None:
            return []
        if timeout > 0:
            select.select([sock], [], [], timeout)
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                self._give_up(f"is gone ({exc})")
            if not chunk:
                self._give_up("closed its end")
            self._buffer += chunk
        messages: list[list[Any]] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            messages.append(_unframe(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]
        return messages

    def _give_up(self, why: str) -> None:
        proc = self._proc
        code = proc.poll() if proc is not None else None
        if proc is not None and code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(1.0)
        self._lost = f"the dispatch process {why} (exit status {code})"
        raise DispatchLost(self._lost)

    def _handle(self, messages: list[list[Any]]) -> list[BatchDone]:
        out: list[BatchDone] = []
        for message in messages:
            kind = message[0]
            if kind == "done":
                _, rid, results, relay = message
                batch = self._batches.pop(rid)
                self._metrics.calls_in_flight.dec(len(batch.calls))
                out.append(
                    BatchDone(
                        batch,
                        [
                            CallResult(chat, call, *fields)
                            for (chat, call), fields in zip(batch.calls, results, strict=True)
                        ],
                    )
                )
                self._apply(relay)
            elif kind == "relay":
                self._apply(message[1])
        return out

    def _apply(self, relay: Relay) -> None:
        ops, status = relay
        for name, labels, op, value in ops:
            if name not in _RELAYED or op not in _OPS:
                continue
            metric = getattr(self._metrics, name)
            if labels:
                metric = metric.labels(**dict(labels))
            getattr(metric, op)(value)
        if status is not None:
            gated, refused, self._breakers = status
            self._gated, self._refused = frozenset(gated), frozenset(refused)


# -- the child ---------------------------------------------------------------------------
class MetricsRelay:
    """Stands in for `Metrics` in the child: records what is done to which metric."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[tuple[str, str], ...], str, float]] = []

    def __getattr__(self, name: str) -> _RelayedMetric:
        if name not in _RELAYED:
            raise AttributeError(name)
        return _RelayedMetric(self.ops, name, ())

    def take(self) -> list[tuple[str, tuple[tuple[str, str], ...], str, float]]:
        ops, self.ops[:] = list(self.ops), []
        return ops


class _RelayedMetric:
    __slots__ = ("_labels", "_name", "_ops")

    def __init__(
        self,
        ops: list[tuple[str, tuple[tuple[str, str], ...], str, float]],
        name: str,
        labels: tuple[tuple[str, str], ...],
    ) -> None:
        self._ops, self._name, self._labels = ops, name, labels

    def labels(self, **labels: str) -> _RelayedMetric:
        return _RelayedMetric(self._ops, self._name, tuple(labels.items()))

    def inc(self, amount: float = 1.0) -> None:
        self._ops.append((self._name, self._labels, "inc", amount))

    def dec(self, amount: float = 1.0) -> None:
        self._ops.append((self._name, self._labels, "dec", amount))

    def set(self, value: float) -> None:
        self._ops.append((self._name, self._labels, "set", value))

    def observe(self, value: float) -> None:
        self._ops.append((self._name, self._labels, "observe", value))


class _ChildDispatcher(Dispatcher):
    """The dispatcher on the child's main thread, answering over the socket."""

    # Set by `attach`, not by an `__init__` of its own: mypyc's compiled `__init__`
    # mishandles extra keyword arguments passed on through `super().__init__(**kwargs)`.
    _writer: asyncio.StreamWriter
    _relay: MetricsRelay
    _ids: dict[int, int]  # id(batch) -> the engine's id for it
    _status: Any

    def attach(self, writer: asyncio.StreamWriter, relay: MetricsRelay) -> None:
        """Run on the caller's (running) loop and answer over `writer`."""
        self._loop.close()  # the loop of its own it made: here it runs on the caller's
        self._loop = asyncio.get_running_loop()
        self._writer = writer
        self._relay = relay
        self._ids = {}
        self._status = None

    def submit_local(self, rid: int, batch: Batch) -> None:
        self._ids[id(batch)] = rid
        task = self._loop.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, done: BatchDone) -> None:
        rid = self._ids.pop(id(done.batch))
        results = [
            (
                r.ok,
                r.result,
                r.error_class,
                r.code,
                r.message,
                r.http_status,
                r.attempts,
                r.ambiguous,
            )
            for r in done.results
        ]
        self._writer.write(_frame(("done", rid, results, self.relay_state())))

    def relay_state(self) -> Relay:
        """Metric operations since the last frame, and the portal status if it changed."""
        status = (
            sorted(p for p, n in self._gated.items() if n),
            sorted(self._batch_refused),
            self.breaker_states(),
        )
        changed = status != self._status
        self._status = status
        return self._relay.take(), status if changed else None

    async def relay_loop(self) -> None:
        while True:
            await asyncio.sleep(_RELAY_INTERVAL_S)
            ops, status = self.relay_state()
            if ops or status is not None:
                self._writer.write(_frame(("relay", (ops, status))))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent thread exits (Linux); end of stream covers the rest."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the line above took effect


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)

    async def read() -> list[Any] | None:
        try:
            head = await reader.readexactly(4)
            return _unframe(await reader.readexactly(_LENGTH.unpack(head)[0]))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    start = await read()
    if start is None or start[0] != "start":
        return
    _, settings, memory_tokens, fmt, level = start
    setup_logging(fmt, level)
    relay = MetricsRelay()
    try:
        dispatcher = _child_dispatcher(settings, memory_tokens, relay, writer)
        await dispatcher._setup()
    except Exception as exc:  # reported to the engine, which exits with it
        logger.exception("dispatch process could not start")
        writer.write(_frame(("failed", f"dispatch process: {type(exc).__name__}: {exc}")))
        await writer.drain()
        return
    writer.write(_frame(("ready",)))
    relaying = asyncio.get_running_loop().create_task(dispatcher.relay_loop())
    while True:
        message = await read()
        if message is None or message[0] == "stop":
            break
        _, rid, portal, connector, line, method, bodies = message
        calls = [
            (str(index), PendingCall("", None, "", method, body[4], 0, ("", 0, index)))
            for index, body in enumerate(bodies)
        ]
        dispatcher.submit_local(rid, Batch(portal, connector, line, method, calls))
    relaying.cancel()
    await dispatcher._shutdown()
    with contextlib.suppress(ConnectionError):
        writer.write(_frame(("relay", dispatcher.relay_state())))
        await writer.drain()


def _child_dispatcher(
    settings: Settings, memory_tokens: bool, relay: MetricsRelay, writer: asyncio.StreamWriter
) -> _ChildDispatcher:
    from consumer.kafka_io import token_store_for

    store = token_store_for(settings, in_memory=memory_tokens)
    dispatcher = _ChildDispatcher.from_settings(settings, relay, store)  # type: ignore[arg-type]
    dispatcher.attach(writer, relay)
    return dispatcher


def main(argv: list[str]) -> int:
    """The child's entry point, `main([_, FD, PARENT_PID])` (spawned by the engine only)."""
    fd, parent = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    tune_gc()
    # A terminal's Ctrl-C reaches the whole process group: the engine decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_serve(sock))
    finally:
        loop.close()
    return 0
