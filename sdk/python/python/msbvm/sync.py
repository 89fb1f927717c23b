"""The synchronous twin of :mod:`msbvm`, for scripts and notebooks: the same classes and
methods, each call blocking until it is done::

    from msbvm.sync import Sandbox

    with Sandbox.create("demo") as sb:
        print(sb.exec(["uname", "-a"]).stdout.decode())

The calls run on one private event loop in a background thread, so they also work where an
event loop is already running (a Jupyter notebook) and from several threads at once. Ctrl-C
(or any exception raised in the waiting thread) cancels the call it interrupts, as cancelling
a task does in :mod:`msbvm`: an interrupted ``exec`` kills the guest process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import msbvm as _async
from msbvm import (
    Command,
    DirEntry,
    ExecEvent,
    ExecResult,
    ImageInfo,
    NetEventStream,
    PathArg,
    PullEvent,
    SandboxInfo,
    Secret,
    SnapshotInfo,
    SpawnGrant,
    list_sandboxes,
)

T = TypeVar("T")

_loop: Optional[asyncio.AbstractEventLoop] = None
_lock = threading.Lock()

# How long an interrupted call waits for its cancelled task to end (its Rust future is
# dropped as the task ends, which is what stops the guest process of an exec).
_CANCEL_GRACE = 5.0
# How often a waiting call wakes up: Python runs signal handlers (Ctrl-C's KeyboardInterrupt)
# in the main thread, and a signal the kernel handed to another thread (the loop's, tokio's)
# does not interrupt a wait without a timeout.
_WAKE_EVERY = 0.25


def _background_loop() -> asyncio.AbstractEventLoop:
    """The private event loop, started in its thread on first use."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="msbvm-sync", daemon=True).start()
        return _loop


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` on the background loop and waits for its result.

    If the wait is interrupted (Ctrl-C's KeyboardInterrupt, or any other exception raised in
    this thread), the task is cancelled, as ``asyncio`` cancels an awaited call, and the
    exception is raised again once the task has ended (or after ``_CANCEL_GRACE`` seconds if
    it ignores the cancellation)."""
    loop = _background_loop()
    result: "concurrent.futures.Future[T]" = concurrent.futures.Future()
    ended = threading.Event()
    tasks: List["asyncio.Task[T]"] = []

    def finished(task: "asyncio.Task[T]") -> None:
        if task.cancelled():
            result.cancel()
        elif task.exception() is not None:
            result.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            result.set_result(task.result())
        ended.set()

    def start() -> None:
        try:
            task = loop.create_task(coro)
        except BaseException as e:  # not a coroutine, say: the caller sees why
            result.set_exception(e)
            ended.set()
            return
        tasks.append(task)
        task.add_done_callback(finished)

    def cancel() -> None:
        # Runs after start() (the loop runs callbacks in order), so the task exists.
        for task in tasks:
            task.cancel()

    loop.call_soon_threadsafe(start)
    try:
        while not ended.wait(_WAKE_EVERY):
            pass
        return result.result()
    except BaseException:
        if not ended.is_set():
            loop.call_soon_threadsafe(cancel)
            ended.wait(_CANCEL_GRACE)
        raise


def pull(
    reference: str,
    *,
    progress: Optional[Callable[[PullEvent], Any]] = None,
    plain_http: Sequence[str] = (),
) -> ImageInfo:
    """Pulls an image into the local store (see :func:`msbvm.pull`)."""
    return _run(_async.pull(reference, progress=progress, plain_http=plain_http))


class ExecStream:
    """A running process: an iterator of :class:`~msbvm.ExecEvent`, with its stdin, signals
    and terminal size (see :class:`msbvm.ExecStream`)."""

    def __init__(self, inner: _async.ExecStream) -> None:
        self._inner = inner

    @property
    def pid(self) -> int:
        """The process's pid in the guest."""
        return self._inner.pid

    def __iter__(self) -> Iterator[ExecEvent]:
        return self

    def __next__(self) -> ExecEvent:
        try:
            return _run(self._inner.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def write_stdin(self, data: Union[bytes, str]) -> None:
        """Writes to the process's stdin."""
        _run(self._inner.write_stdin(data))

    def close_stdin(self) -> None:
        """Closes the process's stdin."""
        _run(self._inner.close_stdin())

    def signal(self, signal: int) -> None:
        """Sends signal number ``signal`` to the process."""
        _run(self._inner.signal(signal))

    def resize(self, rows: int, cols: int) -> None:
        """Resizes the process's terminal."""
        _run(self._inner.resize(rows, cols))

    def close(self) -> None:
        """Stops the process and ends the stream."""
        self._inner.close()

    def wait(self) -> Tuple[int, bytes, bytes]:
        """Reads the process to its end: ``(exit_code, stdout, stderr)``."""
        return _run(self._inner.wait())


class EventStream:
    """The guest's events as an iterator of dicts."""

    def __init__(self, inner: _async.EventStream) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self

    def __next__(self) -> Dict[str, Any]:
        try:
            return _run(self._inner.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None


class Sandbox:
    """A running sandbox; see :class:`msbvm.Sandbox` for every method's meaning (the options
    of :meth:`create` included: ``tmpfs``, ``plugins``, ``tls_intercept``, ``tls_bypass``,
    ``tls_upstream_ca``, ``tls_ca``, ``mtu``, ``dns_servers`` and the rest)."""

    def __init__(self, inner: _async.Sandbox) -> None:
        self._inner = inner

    @staticmethod
    def create(name: str, **options: Any) -> "Sandbox":
        """Starts a sandbox (the options of :meth:`msbvm.Sandbox.create`) and waits until it
        is ready. Use it with ``with`` to have it removed at the end of the block."""

        async def start() -> _async.Sandbox:
            return await _async.Sandbox.create(name, **options)

        return Sandbox(_run(start()))

    @staticmethod
    def get(name: str) -> "Sandbox":
        """Attaches to the running sandbox ``name``."""
        return Sandbox(_run(_async.Sandbox.get(name)))

    @staticmethod
    def fork(snapshot: str, **options: Any) -> List["Sandbox"]:
        """Starts sandboxes from a snapshot (options of :meth:`msbvm.Sandbox.fork`)."""
        return [Sandbox(s) for s in _run(_async.Sandbox.fork(snapshot, **options))]

    @staticmethod
    def remove_named(name: str) -> None:
        """Stops (if running) and removes the sandbox ``name``."""
        _run(_async.Sandbox.remove_named(name))

    @property
    def name(self) -> str:
        """The sandbox's name."""
        return self._inner.name

    @property
    def pid(self) -> int:
        """The pid of the sandbox's runtime process on the host."""
        return self._inner.pid

    def snapshot(self, name: str) -> SnapshotInfo:
        """Takes a snapshot of the running sandbox."""
        return _run(self._inner.snapshot(name))

    def publish(self, port: str) -> str:
        """Publishes a guest TCP port on the host; returns "ADDR:PORT"."""
        return _run(self._inner.publish(port))

    def dump_memory(self, path: PathArg) -> int:
        """Writes the running guest's RAM to the new host file ``path``; its size in bytes."""
        return _run(self._inner.dump_memory(path))

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops the guest, forcing it off after ``timeout`` seconds (default 5)."""
        _run(self._inner.stop(timeout))

    def kill(self) -> None:
        """Forces the VM off now."""
        _run(self._inner.kill())

    def remove(self) -> None:
        """Stops the sandbox if running and removes everything it left."""
        _run(self._inner.remove())

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def exec(self, command: Command, **options: Any) -> ExecResult:
        """Runs ``command`` to its end (options as :meth:`msbvm.Sandbox.exec`)."""
        return _run(self._inner.exec(command, **options))

    def exec_stream(self, command: Command, **options: Any) -> ExecStream:
        """Starts ``command`` and returns its :class:`ExecStream`."""
        return ExecStream(_run(self._inner.exec_stream(command, **options)))

    def read(self, path: str) -> bytes:
        """The whole guest file ``path``."""
        return _run(self._inner.read(path))

    def write(self, path: str, data: Union[bytes, str]) -> None:
        """Writes ``data`` to the guest file ``path``."""
        _run(self._inner.write(path, data))

    def list(self, path: str) -> List[DirEntry]:  # noqa: A003
        """The entries of the guest directory ``path``."""
        return _run(self._inner.list(path))

    def stat(self, path: str) -> DirEntry:
        """What the guest path ``path`` is."""
        return _run(self._inner.stat(path))

    def mkdir(self, path: str, parents: bool = False) -> None:
        """Makes the guest directory ``path``."""
        _run(self._inner.mkdir(path, parents))

    def remove_path(self, path: str, recursive: bool = False) -> None:
        """Removes the guest path ``path``."""
        _run(self._inner.remove_path(path, recursive))

    def copy_in(self, host_path: Any, guest_path: str) -> None:
        """Copies a host file or directory into the guest."""
        _run(self._inner.copy_in(host_path, guest_path))

    def copy_out(self, guest_path: str, host_path: Any) -> None:
        """Copies a guest file or directory to the host."""
        _run(self._inner.copy_out(guest_path, host_path))

    def set_network_policy(self, **policy: Any) -> None:
        """Replaces the network policy (see :meth:`msbvm.Sandbox.set_network_policy`)."""
        _run(self._inner.set_network_policy(**policy))

    def emit(self, kind: str, data: Any = None) -> None:
        """Sends an event to the guest."""
        _run(self._inner.emit(kind, data))

    def events(self, *types: str) -> EventStream:
        """Subscribes to the guest's events of ``types``."""
        return EventStream(_run(self._inner.events(*types)))

    def request(self, kind: str, data: Any = None, timeout: float = 10.0) -> Dict[str, Any]:
        """Sends an event with a fresh id and waits up to ``timeout`` seconds for the guest's
        answer; that event as a dict (see :meth:`msbvm.Sandbox.request`)."""
        return _run(self._inner.request(kind, data, timeout))

    def reply(self, event: Mapping[str, Any], kind: str, data: Any = None) -> None:
        """Answers the guest event ``event`` (a dict :meth:`events` yielded)."""
        _run(self._inner.reply(event, kind, data))

    def network_stats(self) -> Dict[str, Any]:
        """The network stack's counters (bytes, packets, flows, drops) as a dict."""
        return _run(self._inner.network_stats())

    def network_events(self) -> List[Dict[str, Any]]:
        """The network decisions still on record, oldest first, as dicts."""
        return self._inner.network_events()

    def network_event_stream(self) -> NetEventStream:
        """A :class:`~msbvm.NetEventStream` (its ``poll()`` is synchronous in both APIs)."""
        return self._inner.network_event_stream()

    def __repr__(self) -> str:
        return f"msbvm.sync.Sandbox(name={self.name!r}, pid={self.pid})"


__all__ = [
    "Sandbox",
    "ExecStream",
    "EventStream",
    "NetEventStream",
    "list_sandboxes",
    "pull",
    "SandboxInfo",
    "Secret",
    "SpawnGrant",
    "ImageInfo",
    "SnapshotInfo",
]
