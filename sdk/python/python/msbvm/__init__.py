"""msbvm: disposable Linux microVM sandboxes, from Python.

Asynchronous API (this module) and a synchronous twin (:mod:`msbvm.sync`) over the Rust SDK,
with the same concepts and names::

    import asyncio, msbvm

    async def main():
        async with msbvm.Sandbox.create("demo", memory=256) as sb:
            out = await sb.exec(["echo", "hello"])
            print(out.stdout.decode(), out.exit_code)

    asyncio.run(main())

Each sandbox is owned by a runtime process, the ``msbvm`` binary, which this package starts.
It is looked for, in order: ``$MSBVM_BIN``; the copy inside this package (``msbvm/bin/msbvm``,
present in wheels built by ``scripts/build-python``); ``msbvm`` on ``PATH``. The guest agent
(``msbvm-agent``) is looked for next to that binary, or at ``$MSBVM_AGENT``. A missing one raises
:class:`~msbvm.errors.RuntimeMissingError` or :class:`~msbvm.errors.AgentMissingError`, whose
message says what to do.

A sandbox created without ``detached=True`` lives as long as this process holds it: it stops
when its :class:`Sandbox` object is garbage-collected or the process exits. ``async with``
removes it at the end of the block.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _native
from ._native import DirEntry, ExecEvent, ExecResult, ImageInfo, SandboxInfo, SnapshotInfo
from .errors import *  # noqa: F401,F403  (the exception classes are part of the API)
from .errors import MsbvmError

__version__: str = _native.version()

_BIN_ENV = "MSBVM_BIN"
_bundled = Path(__file__).resolve().parent / "bin" / "msbvm"
if not os.environ.get(_BIN_ENV) and _bundled.is_file():
    # The runtime (and the agent beside it) shipped inside the wheel.
    os.environ[_BIN_ENV] = str(_bundled)

Command = Union[str, Sequence[str]]


def _argv(command: Command) -> List[str]:
    """A command as an argument vector: a string is one program (no shell parsing)."""
    if isinstance(command, str):
        return [command]
    argv = list(command)
    if not all(isinstance(a, str) for a in argv):
        raise TypeError("a command is a string or a sequence of strings")
    return argv


def _texts(what: str, values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """A sequence of strings as a list (None stays None); one string alone is a TypeError,
    not a list of its characters."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} is a sequence of strings, not one string")
    return list(values)


PathArg = Union[str, "os.PathLike[str]"]


def _paths(what: str, values: Optional[Union[PathArg, Sequence[PathArg]]]) -> Optional[List[str]]:
    """One path or a sequence of paths as a list of strings (None stays None)."""
    if values is None:
        return None
    if isinstance(values, (str, os.PathLike)):
        return [os.fspath(values)]
    if isinstance(values, bytes):
        raise TypeError(f"{what} is a path (str or os.PathLike) or a sequence of paths")
    return [os.fspath(v) for v in values]


def _secret(secret: "Secret") -> Tuple[str, str, List[str], bool, bool, bool]:
    if not isinstance(secret, Secret):
        raise TypeError("secrets are msbvm.Secret values")
    return secret._native()


def _volume(v: Union[str, Tuple[str, str], Tuple[str, str, bool]]) -> str:
    """A volume as the SDK's "HOST:GUEST[:ro]" text."""
    if isinstance(v, str):
        return v
    if len(v) == 2:
        return f"{v[0]}:{v[1]}"
    host, guest, read_only = v
    return f"{host}:{guest}" + (":ro" if read_only else "")


@dataclass(frozen=True)
class Secret:
    """A secret the guest sees only as a placeholder: msbvm swaps the placeholder for
    ``value`` in requests to ``hosts`` (host names, ``*.domain`` patterns), in headers by
    default, and in query strings or bodies when asked. The value never enters the guest, and
    it is left out of ``repr``."""

    name: str
    value: str = field(repr=False)
    hosts: Sequence[str] = ()
    inject_headers: bool = True
    inject_query: bool = False
    inject_body: bool = False

    @staticmethod
    def from_env(name: str, hosts: Sequence[str] = (), variable: Optional[str] = None) -> "Secret":
        """A secret whose value is the host environment variable ``variable`` (default:
        ``name``); a missing variable raises :class:`InvalidConfigError`."""
        var = variable or name
        value = os.environ.get(var)
        if value is None:
            from .errors import InvalidConfigError

            raise InvalidConfigError(f"secret {name}: the environment variable {var} is not set")
        return Secret(name, value, tuple(hosts))

    def _native(self) -> Tuple[str, str, List[str], bool, bool, bool]:
        return (
            self.name,
            self.value,
            list(self.hosts),
            self.inject_headers,
            self.inject_query,
            self.inject_body,
        )


@dataclass(frozen=True)
class SpawnGrant:
    """What a sandbox may create from inside (see :mod:`msbvm.peer`): up to ``children``
    sandboxes at once, ``cpus`` vCPUs and ``memory`` MiB between them (defaults: one vCPU and
    512 MiB a child), only ``images`` (any when empty), network allow rules among
    ``net_allow``, ``depth`` levels below it, and the parent's ``secrets`` named here."""

    children: int
    cpus: Optional[int] = None
    memory: Optional[int] = None
    images: Sequence[str] = ()
    net_allow: Sequence[str] = ()
    depth: int = 1
    secrets: Sequence[str] = ()

    def _native(self) -> Tuple[int, Optional[int], Optional[int], List[str], List[str], int, List[str]]:
        return (
            self.children,
            self.cpus,
            self.memory,
            list(self.images),
            list(self.net_allow),
            self.depth,
            list(self.secrets),
        )


@dataclass(frozen=True)
class PullEvent:
    """One step of :func:`pull`: ``kind`` is "download_started" (``done`` bytes already on
    disk of ``total``), "download_progress" (``done`` bytes), "download_finished" /
    "unpack_finished" (``done`` is 1 when it was cached), or "unpack_started"; ``id`` is the
    blob's digest or the layer's diff id."""

    kind: str
    id: str
    done: int
    total: int


async def pull(
    reference: str,
    *,
    progress: Optional[Callable[[PullEvent], Any]] = None,
    plain_http: Sequence[str] = (),
) -> ImageInfo:
    """Pulls the OCI image ``reference`` into the local store (sandboxes created with it then
    start without pulling). ``progress`` is called with a :class:`PullEvent` per step (from
    another thread: keep it short); an exception in it is printed, not raised. ``plain_http``
    names registries (``host:port``) reached without TLS."""
    callback = None
    if progress is not None:
        callback = lambda kind, id, done, total: progress(PullEvent(kind, id, done, total))  # noqa: E731
    return await _native.pull(reference, progress=callback, plain_http=list(plain_http))


def list_sandboxes() -> List[SandboxInfo]:
    """Every sandbox of this user (``$MSBVM_HOME``), running or not (Rust: ``Sandbox::list``;
    here a function, since ``Sandbox.list`` lists a guest directory)."""
    return _native.list()


class ExecStream:
    """A running process: an async iterator of :class:`ExecEvent` (``kind`` is "started",
    "stdout", "stderr" or "exited"), with its stdin, signals and terminal size.

    ``await stream.wait()`` reads what is left and returns ``(exit_code, stdout, stderr)``.
    """

    def __init__(self, native: Any) -> None:
        self._native = native
        self._done = False

    @property
    def pid(self) -> int:
        """The process's pid in the guest."""
        return self._native.pid

    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        return self

    async def __anext__(self) -> ExecEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._native.next_event()
        if event is None:
            self._done = True
            raise StopAsyncIteration
        if event.kind == "exited":
            self._done = True
        return event

    async def write_stdin(self, data: Union[bytes, str]) -> None:
        """Writes to the process's stdin (text is encoded as UTF-8)."""
        await self._native.write_stdin(data.encode() if isinstance(data, str) else bytes(data))

    async def close_stdin(self) -> None:
        """Closes the process's stdin: it reads end of file."""
        await self._native.close_stdin()

    async def signal(self, signal: int) -> None:
        """Sends signal number ``signal`` (e.g. ``signal.SIGTERM``) to the process."""
        await self._native.signal(int(signal))

    async def resize(self, rows: int, cols: int) -> None:
        """Resizes the process's terminal (exec_stream(..., tty=(rows, cols)))."""
        await self._native.resize(rows, cols)

    def close(self) -> None:
        """Stops the process (the guest agent kills its process group) and ends the stream;
        what a cancelled ``wait`` leaves to do."""
        self._done = True
        self._native.close()

    async def wait(self) -> Tuple[int, bytes, bytes]:
        """Reads the process to its end: ``(exit_code, stdout, stderr)``. Cancelling it
        (``asyncio.wait_for``, task cancellation) closes the stream, killing the process."""
        try:
            return await self._wait()
        except asyncio.CancelledError:
            self.close()
            raise

    async def _wait(self) -> Tuple[int, bytes, bytes]:
        out: List[bytes] = []
        err: List[bytes] = []
        code = -1
        async for event in self:
            if event.kind == "stdout":
                out.append(event.data)
            elif event.kind == "stderr":
                err.append(event.data)
            elif event.kind == "exited":
                code = event.exit_code
        return code, b"".join(out), b"".join(err)


class EventStream:
    """The guest's events as an async iterator of dicts: ``type``, ``data``, ``id``, ``reply_to``,
    ``pid`` and ``exec`` (the sender in the guest), ``connection``, ``time_ms``."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def __aiter__(self) -> AsyncIterator[Dict[str, Any]]:
        return self

    async def __anext__(self) -> Dict[str, Any]:
        text = await self._native.next()
        if text is None:
            raise StopAsyncIteration
        return json.loads(text)


class NetEventStream:
    """The network stack's record of its decisions (flows allowed and denied, DNS queries,
    HTTP requests), read as it grows: each :meth:`poll` returns the events recorded since the
    previous one, oldest first, as dicts. Polling reads a host file and does not block, so it
    is a plain method in :mod:`msbvm` and :mod:`msbvm.sync` alike."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def poll(self) -> List[Dict[str, Any]]:
        """The events recorded since the last poll (all on record, the first time)."""
        return json.loads(self._native.poll())


class _Creating:
    """What :meth:`Sandbox.create` returns: await it for the sandbox, or use it with
    ``async with`` to have the sandbox removed at the end of the block."""

    def __init__(self, awaitable: Awaitable["Sandbox"]) -> None:
        self._awaitable = awaitable
        self._sandbox: Optional[Sandbox] = None

    def __await__(self) -> Generator[Any, None, "Sandbox"]:
        return self._awaitable.__await__()

    async def __aenter__(self) -> "Sandbox":
        self._sandbox = await self._awaitable
        return self._sandbox

    async def __aexit__(self, *exc: Any) -> None:
        if self._sandbox is not None:
            await self._sandbox.remove()


class Sandbox:
    """A running sandbox. Make one with :meth:`Sandbox.create` or attach to one by name with
    :meth:`Sandbox.get`. Every method that waits is a coroutine."""

    def __init__(self, native: Any) -> None:
        self._native = native

    # --- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def create(
        name: str,
        *,
        image: Optional[str] = None,
        cpus: Optional[int] = None,
        memory: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        volumes: Optional[Sequence[Union[str, Tuple[str, str], Tuple[str, str, bool]]]] = None,
        network: bool = True,
        net_allow: Optional[Sequence[str]] = None,
        net_deny: Optional[Sequence[str]] = None,
        net_default_allow: Optional[bool] = None,
        workdir: Optional[str] = None,
        user: Optional[str] = None,
        ready_timeout: Optional[float] = None,
        detached: bool = False,
        secrets: Sequence[Secret] = (),
        allow_spawn: Optional[SpawnGrant] = None,
        publish: Sequence[str] = (),
        tmpfs: Sequence[str] = (),
        plugins: Sequence[str] = (),
        tls_intercept: Sequence[str] = (),
        tls_bypass: Sequence[str] = (),
        tls_upstream_ca: Optional[Union[PathArg, Sequence[PathArg]]] = None,
        tls_ca: Optional[str] = None,
        mtu: Optional[int] = None,
        dns_servers: Sequence[str] = (),
    ) -> _Creating:
        """Starts a sandbox called ``name`` and waits until it is ready.

        ``image``: an OCI image reference (pulled if needed; default: the built-in minimal
        image). ``cpus``, ``memory`` (MiB). ``env``: variables every process gets.
        ``volumes``: host directories as "HOST:GUEST[:ro]" or ``(host, guest[, read_only])``.
        ``network``: give the guest a network at all. ``net_allow`` / ``net_deny``: policy
        rules (host names, CIDRs, ``host:port``), first match wins, then
        ``net_default_allow``. ``workdir``, ``user``: defaults for every process.
        ``ready_timeout``: seconds to wait for the boot. ``detached``: keep running after this
        process exits. ``secrets``: :class:`Secret`\ s (the guest sees placeholders).
        ``allow_spawn``: a :class:`SpawnGrant` letting code inside create sandboxes.
        ``publish``: guest TCP ports on the host, as "[ADDR:]HOST_PORT:GUEST_PORT".
        ``tmpfs``: tmpfs mounts, as "GUEST_PATH[:SIZE]" (SIZE in bytes or with a k, m or g
        suffix; default half the guest's memory). ``plugins``: plugins in the CLI's form
        "NAME_OR_PATH[:CONFIG]" (a shipped plugin by name, e.g. "audit:path=/tmp/a.jsonl",
        or an executable by path, relative to the current directory), run in this order.
        ``tls_intercept``: hosts whose TLS connections are intercepted ("HOST", "*.SUFFIX" or
        "all"), so that HTTP rules apply inside them; the guest trusts msbvm's CA.
        ``tls_bypass``: hosts never intercepted (certificate-pinning clients).
        ``tls_upstream_ca``: a PEM file (or several) of extra trust roots for intercepted
        upstream servers. ``tls_ca``: the CA the guest trusts, "user" (default; made once per
        user) or "sandbox" (made for this sandbox alone). ``mtu``: the guest interface's MTU
        (576 to 65520; default 1500). ``dns_servers``: where the guest's allowed DNS queries
        go instead of the host's resolvers, as "ADDR" (port 53) or "ADDR:PORT"
        ("[V6ADDR]:PORT").

        Returns an awaitable that is also an async context manager (removing the sandbox at
        the end of the block).
        """

        async def start() -> Sandbox:
            native = await _native.create(
                name,
                image=image,
                cpus=cpus,
                memory=memory,
                env=dict(env) if env is not None else None,
                volumes=[_volume(v) for v in volumes] if volumes is not None else None,
                network=network,
                net_allow=list(net_allow) if net_allow is not None else None,
                net_deny=list(net_deny) if net_deny is not None else None,
                net_default_allow=net_default_allow,
                workdir=workdir,
                user=user,
                ready_timeout=ready_timeout,
                detached=detached,
                secrets=[_secret(x) for x in secrets],
                allow_spawn=allow_spawn._native() if allow_spawn is not None else None,
                publish=_texts("publish", publish),
                tmpfs=_texts("tmpfs", tmpfs),
                plugins=_texts("plugins", plugins),
                tls_intercept=_texts("tls_intercept", tls_intercept),
                tls_bypass=_texts("tls_bypass", tls_bypass),
                tls_upstream_ca=_paths("tls_upstream_ca", tls_upstream_ca),
                tls_ca=tls_ca,
                mtu=mtu,
                dns_servers=_texts("dns_servers", dns_servers),
            )
            return Sandbox(native)

        return _Creating(start())

    @staticmethod
    async def get(name: str) -> "Sandbox":
        """Attaches to the running sandbox ``name`` (started by any process)."""
        return Sandbox(await _native.get(name))

    @staticmethod
    async def fork(
        snapshot: str,
        *,
        count: int = 1,
        name: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        cpus: Optional[int] = None,
        memory: Optional[int] = None,
        detached: bool = False,
        ready_timeout: Optional[float] = None,
        net_allow: Optional[Sequence[str]] = None,
        net_deny: Optional[Sequence[str]] = None,
        net_default_allow: Optional[bool] = None,
        secrets: Sequence[Secret] = (),
    ) -> List["Sandbox"]:
        """Starts ``count`` sandboxes at once from the snapshot ``snapshot`` (see
        :meth:`snapshot`), each where the source was when it was taken. ``name`` (default:
        the snapshot's) is suffixed with ``-1``, ``-2``, ... Network rules given here replace
        the source's; ``env`` is added for new processes."""
        rules = None
        if net_allow is not None or net_deny is not None:
            rules = [(False, r) for r in net_deny or ()] + [(True, r) for r in net_allow or ()]
        natives = await _native.fork(
            snapshot,
            count=count,
            name=name,
            env=dict(env) if env is not None else None,
            cpus=cpus,
            memory=memory,
            detached=detached,
            ready_timeout=ready_timeout,
            net_rules=rules,
            net_default_allow=net_default_allow,
            secrets=[_secret(x) for x in secrets],
        )
        return [Sandbox(n) for n in natives]

    @staticmethod
    async def remove_named(name: str) -> None:
        """Stops (if running) and removes the sandbox ``name``."""
        await _native.remove(name)

    @property
    def name(self) -> str:
        """The sandbox's name."""
        return self._native.name

    @property
    def pid(self) -> int:
        """The pid of the sandbox's runtime process on the host."""
        return self._native.pid

    async def snapshot(self, name: str) -> SnapshotInfo:
        """Takes a snapshot named ``name`` of the running sandbox (its memory, devices and
        writable layer; the guest pauses while it is written, then goes on). Start copies of
        it with :meth:`Sandbox.fork`; ``msbvm snapshot rm`` removes it."""
        return await self._native.snapshot(name)

    async def publish(self, port: str) -> str:
        """Publishes a guest TCP port on the host while the sandbox runs:
        "[ADDR:]HOST_PORT:GUEST_PORT" (host port 0 picks a free one). Returns "ADDR:PORT"."""
        return await self._native.publish(port)

    async def dump_memory(self, path: PathArg) -> int:
        """Debugging aid: writes all of the running guest's RAM to the new host file ``path``
        (mode 0600; an existing file is an :class:`InvalidConfigError`) and returns its size
        in bytes. The guest keeps running, so the copy is not one instant's; the file holds
        everything the guest had in memory."""
        return await self._native.dump_memory(os.fspath(path))

    async def stop(self, timeout: Optional[float] = None) -> None:
        """Stops the guest, forcing it off after ``timeout`` seconds (default 5)."""
        await self._native.stop(timeout)

    async def kill(self) -> None:
        """Forces the VM off now."""
        await self._native.kill()

    async def remove(self) -> None:
        """Stops the sandbox if running and removes everything it left."""
        await self._native.remove()

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.remove()

    # --- processes -------------------------------------------------------------------------

    async def exec(
        self,
        command: Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        tty: Optional[Tuple[int, int]] = None,
        timeout: Optional[float] = None,
    ) -> ExecResult:
        """Runs ``command`` (an argument list, or one program name) to its end and returns an
        :class:`ExecResult` (``stdout``, ``stderr`` as bytes, ``exit_code``). A non-zero exit
        is not an error. ``timeout`` (seconds) kills it; it then ends with ``timed_out``."""
        return await self._native.exec(
            _argv(command),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            uid=uid,
            gid=gid,
            tty=tty,
            timeout=timeout,
        )

    async def exec_stream(
        self,
        command: Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        tty: Optional[Tuple[int, int]] = None,
        timeout: Optional[float] = None,
    ) -> ExecStream:
        """Starts ``command`` and returns its :class:`ExecStream` (events as they happen,
        stdin, signals, resize)."""
        native = await self._native.exec_stream(
            _argv(command),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            uid=uid,
            gid=gid,
            tty=tty,
            timeout=timeout,
        )
        return ExecStream(native)

    # --- files -----------------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """The whole guest file ``path``."""
        return await self._native.read_file(path)

    async def write(self, path: str, data: Union[bytes, str]) -> None:
        """Writes ``data`` (text is encoded as UTF-8) to the guest file ``path``."""
        await self._native.write_file(path, data.encode() if isinstance(data, str) else bytes(data))

    async def list(self, path: str) -> List[DirEntry]:  # noqa: A003 (the SDK's name)
        """The entries of the guest directory ``path``."""
        return await self._native.list_dir(path)

    async def stat(self, path: str) -> DirEntry:
        """What the guest path ``path`` is (symlinks followed)."""
        return await self._native.stat(path)

    async def mkdir(self, path: str, parents: bool = False) -> None:
        """Makes the guest directory ``path`` (with its parents when ``parents``)."""
        await self._native.mkdir(path, parents)

    async def remove_path(self, path: str, recursive: bool = False) -> None:
        """Removes the guest path ``path`` (a directory's contents too when ``recursive``)."""
        await self._native.remove_path(path, recursive)

    async def copy_in(self, host_path: Union[str, "os.PathLike[str]"], guest_path: str) -> None:
        """Copies a host file or directory into the guest."""
        await self._native.copy_in(os.fspath(host_path), guest_path)

    async def copy_out(self, guest_path: str, host_path: Union[str, "os.PathLike[str]"]) -> None:
        """Copies a guest file or directory to the host."""
        await self._native.copy_out(guest_path, os.fspath(host_path))

    # --- network and events ----------------------------------------------------------------

    async def set_network_policy(
        self,
        *,
        default_allow: bool,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> None:
        """Replaces the network policy: deny rules first, then allow rules, then the default.
        Connections already open keep going; new ones see the new policy."""
        rules = [(False, r) for r in deny] + [(True, r) for r in allow]
        await self._native.set_network_policy(default_allow, rules)

    async def emit(self, kind: str, data: Any = None) -> None:
        """Sends an event of type ``kind`` with JSON-serialisable ``data`` to the guest."""
        await self._native.emit(kind, json.dumps(data))

    async def events(self, *types: str) -> EventStream:
        """Subscribes to the guest's events of ``types`` (all when none are given)."""
        return EventStream(await self._native.events(list(types)))

    async def request(self, kind: str, data: Any = None, timeout: float = 10.0) -> Dict[str, Any]:
        """Sends an event of type ``kind`` with JSON-serialisable ``data`` and a fresh ``id``
        to the guest's subscribers, and waits up to ``timeout`` seconds for the guest event
        whose ``reply_to`` names it; returns that event as a dict (the form :meth:`events`
        yields). No answer in time raises :class:`AgentTimeoutError` (a
        :class:`TimeoutError`)."""
        return json.loads(await self._native.request(kind, json.dumps(data), timeout))

    async def reply(self, event: Mapping[str, Any], kind: str, data: Any = None) -> None:
        """Answers the guest event ``event`` (a dict :meth:`events` yielded, which carries an
        ``id``) with an event of type ``kind`` and JSON-serialisable ``data``, sent to the
        guest connection it came on with ``reply_to`` set to its id. An event without an
        ``id`` (or a dict that is no event) raises :class:`InvalidConfigError`."""
        if not isinstance(event, Mapping):
            raise TypeError("reply answers an event: a dict that events() yielded")
        await self._native.reply(json.dumps(dict(event)), kind, json.dumps(data))

    async def network_stats(self) -> Dict[str, Any]:
        """The network stack's counters (bytes, packets, flows, drops) as a dict."""
        return json.loads(await self._native.network_stats())

    def network_events(self) -> List[Dict[str, Any]]:
        """The network decisions still on record (flows allowed and denied, DNS queries, HTTP
        requests), oldest first, as dicts. The record is capped (the oldest go first); call
        again to see newer ones, or read it as it grows with :meth:`network_event_stream`.
        Reads a host file: a plain method, not a coroutine."""
        return json.loads(self._native.network_events())

    def network_event_stream(self) -> NetEventStream:
        """A :class:`NetEventStream`, whose ``poll()`` returns the network decisions recorded
        since the previous poll."""
        return NetEventStream(self._native.network_event_stream())

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, pid={self.pid})"


__all__ = [
    "Sandbox",
    "Secret",
    "SpawnGrant",
    "pull",
    "PullEvent",
    "ImageInfo",
    "SnapshotInfo",
    "peer",
    "ExecStream",
    "ExecResult",
    "ExecEvent",
    "EventStream",
    "NetEventStream",
    "DirEntry",
    "SandboxInfo",
    "list_sandboxes",
    "MsbvmError",
    "errors",
    "sync",
]
