"""Type stubs of the native module (sdk/python/src/lib.rs); use the `msbvm` package's API."""

from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

def version() -> str: ...
def error_classes() -> List[str]: ...
def create(
    name: str,
    *,
    image: Optional[str] = ...,
    cpus: Optional[int] = ...,
    memory: Optional[int] = ...,
    env: Optional[Dict[str, str]] = ...,
    volumes: Optional[List[str]] = ...,
    network: bool = ...,
    net_allow: Optional[List[str]] = ...,
    net_deny: Optional[List[str]] = ...,
    net_default_allow: Optional[bool] = ...,
    workdir: Optional[str] = ...,
    user: Optional[str] = ...,
    ready_timeout: Optional[float] = ...,
    detached: bool = ...,
    secrets: Optional[List[Tuple[str, str, List[str], bool, bool, bool]]] = ...,
    allow_spawn: Optional[
        Tuple[int, Optional[int], Optional[int], List[str], List[str], int, List[str]]
    ] = ...,
    publish: Optional[List[str]] = ...,
    tmpfs: Optional[List[str]] = ...,
    plugins: Optional[List[str]] = ...,
    tls_intercept: Optional[List[str]] = ...,
    tls_bypass: Optional[List[str]] = ...,
    tls_upstream_ca: Optional[List[str]] = ...,
    tls_ca: Optional[str] = ...,
    mtu: Optional[int] = ...,
    dns_servers: Optional[List[str]] = ...,
) -> Awaitable[Sandbox]: ...
def get(name: str) -> Awaitable[Sandbox]: ...
def remove(name: str) -> Awaitable[None]: ...
def list() -> List[SandboxInfo]: ...
def pull(
    reference: str,
    *,
    progress: Optional[Callable[[str, str, int, int], Any]] = ...,
    plain_http: Optional[List[str]] = ...,
) -> Awaitable[ImageInfo]: ...
def fork(
    snapshot: str,
    *,
    count: int = ...,
    name: Optional[str] = ...,
    env: Optional[Dict[str, str]] = ...,
    cpus: Optional[int] = ...,
    memory: Optional[int] = ...,
    detached: bool = ...,
    ready_timeout: Optional[float] = ...,
    net_rules: Optional[List[Tuple[bool, str]]] = ...,
    net_default_allow: Optional[bool] = ...,
    secrets: Optional[List[Tuple[str, str, List[str], bool, bool, bool]]] = ...,
) -> Awaitable[List[Sandbox]]: ...
def in_sandbox() -> bool: ...
def connect_peers() -> Awaitable[Peers]: ...

class ImageInfo:
    reference: str
    digest: str
    size: int
    layers: int

class SnapshotInfo:
    name: str
    source: str
    created: int
    cpus: int
    memory_mib: int

class PeerOutput:
    @property
    def exit_code(self) -> int: ...
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def truncated(self) -> bool: ...

class PeerInfo:
    name: str
    status: str
    cpus: int
    memory_mib: int
    image: str

class Peers:
    def create(
        self,
        name: str,
        *,
        image: Optional[str] = ...,
        cpus: Optional[int] = ...,
        memory: Optional[int] = ...,
        env: Optional[Dict[str, str]] = ...,
        net_allow: Optional[List[str]] = ...,
        net_deny: Optional[List[str]] = ...,
        network: bool = ...,
        allow_spawn: Optional[str] = ...,
        secrets: Optional[List[str]] = ...,
    ) -> Awaitable[None]: ...
    def exec(self, name: str, argv: List[str], stdin: bytes = ...) -> Awaitable[PeerOutput]: ...
    def read_file(self, name: str, path: str) -> Awaitable[bytes]: ...
    def write_file(self, name: str, path: str, data: bytes) -> Awaitable[None]: ...
    def list(self) -> Awaitable[List[PeerInfo]]: ...
    def emit(self, name: str, kind: str, data: str) -> Awaitable[None]: ...
    def stop(self, name: str) -> Awaitable[None]: ...
    def remove(self, name: str) -> Awaitable[None]: ...

class SandboxInfo:
    name: str
    status: str
    pid: int
    cpus: int
    memory_mib: int
    detached: bool

class ExecResult:
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def signal(self) -> Optional[int]: ...
    @property
    def timed_out(self) -> bool: ...

class ExecEvent:
    kind: str
    pid: Optional[int]
    exit_code: Optional[int]
    data: bytes

class ExecStream:
    @property
    def pid(self) -> int: ...
    def next_event(self) -> Awaitable[Optional[ExecEvent]]: ...
    def write_stdin(self, data: bytes) -> Awaitable[None]: ...
    def close_stdin(self) -> Awaitable[None]: ...
    def signal(self, signal: int) -> Awaitable[None]: ...
    def resize(self, rows: int, cols: int) -> Awaitable[None]: ...
    def close(self) -> None: ...

class EventStream:
    def next(self) -> Awaitable[Optional[str]]: ...

class NetEventStream:
    def poll(self) -> str: ...

class DirEntry:
    name: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int

class Sandbox:
    @property
    def name(self) -> str: ...
    @property
    def pid(self) -> int: ...
    def exec(
        self,
        argv: List[str],
        *,
        env: Optional[Dict[str, str]] = ...,
        cwd: Optional[str] = ...,
        uid: Optional[int] = ...,
        gid: Optional[int] = ...,
        tty: Optional[Tuple[int, int]] = ...,
        timeout: Optional[float] = ...,
    ) -> Awaitable[ExecResult]: ...
    def exec_stream(
        self,
        argv: List[str],
        *,
        env: Optional[Dict[str, str]] = ...,
        cwd: Optional[str] = ...,
        uid: Optional[int] = ...,
        gid: Optional[int] = ...,
        tty: Optional[Tuple[int, int]] = ...,
        timeout: Optional[float] = ...,
    ) -> Awaitable[ExecStream]: ...
    def read_file(self, path: str) -> Awaitable[bytes]: ...
    def write_file(self, path: str, data: bytes) -> Awaitable[None]: ...
    def list_dir(self, path: str) -> Awaitable[List[DirEntry]]: ...
    def stat(self, path: str) -> Awaitable[DirEntry]: ...
    def mkdir(self, path: str, parents: bool = ...) -> Awaitable[None]: ...
    def remove_path(self, path: str, recursive: bool = ...) -> Awaitable[None]: ...
    def copy_in(self, host_path: str, guest_path: str) -> Awaitable[None]: ...
    def copy_out(self, guest_path: str, host_path: str) -> Awaitable[None]: ...
    def set_network_policy(
        self, default_allow: bool, rules: Sequence[Tuple[bool, str]]
    ) -> Awaitable[None]: ...
    def emit(self, kind: str, data: str) -> Awaitable[None]: ...
    def events(self, types: List[str]) -> Awaitable[EventStream]: ...
    def request(self, kind: str, data: str, timeout: float = ...) -> Awaitable[str]: ...
    def reply(self, event: str, kind: str, data: str) -> Awaitable[None]: ...
    def network_stats(self) -> Awaitable[str]: ...
    def network_events(self) -> str: ...
    def network_event_stream(self) -> NetEventStream: ...
    def dump_memory(self, path: str) -> Awaitable[int]: ...
    def snapshot(self, name: str) -> Awaitable[SnapshotInfo]: ...
    def publish(self, port: str) -> Awaitable[str]: ...
    def stop(self, timeout: Optional[float] = ...) -> Awaitable[None]: ...
    def kill(self) -> Awaitable[None]: ...
    def remove(self) -> Awaitable[None]: ...

