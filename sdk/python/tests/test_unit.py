"""Unit tests of the Python SDK that need no VM: argument checks, error mapping, the Python
layer over the native module, the stubs. Run on the host by scripts/test-python (pytest); the
end-to-end scenario against real sandboxes is tests/tests/sdk_nested.rs."""

import ast
import asyncio
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import msbvm
import msbvm.errors as errors
import msbvm.sync
from msbvm import _native


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    """Every test gets its own empty msbvm home, so nothing here touches real sandboxes."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MSBVM_HOME", str(home))
    return home


def run(awaitable):
    """Awaits `awaitable` (a coroutine, or what Sandbox.create returns) on a fresh loop."""

    async def wait():
        return await awaitable

    return asyncio.run(wait())


def test_every_error_kind_has_a_class_deriving_from_msbvmerror():
    names = _native.error_classes()
    assert len(names) == len(set(names)) >= 28
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.MsbvmError), name
        assert cls.__doc__, name
        assert getattr(msbvm, name) is cls, f"msbvm.{name} is not re-exported"
    # errors.py defines no class the native module never raises.
    defined = {n for n in errors.__all__ if n != "MsbvmError"}
    assert defined == set(names)


def test_errors_also_derive_from_the_builtin_a_python_user_catches():
    assert issubclass(errors.NotFoundError, LookupError)
    assert issubclass(errors.InvalidConfigError, ValueError)
    assert issubclass(errors.InvalidNameError, ValueError)
    assert issubclass(errors.ReadyTimeoutError, TimeoutError)
    assert issubclass(errors.AgentTimeoutError, TimeoutError)
    assert issubclass(errors.ConnectionLostError, ConnectionError)
    assert issubclass(errors.GuestFileError, OSError)


def test_a_missing_sandbox_is_notfounderror_with_its_name(empty_home):
    with pytest.raises(msbvm.NotFoundError) as e:
        run(msbvm.Sandbox.get("nobody-here"))
    assert e.value.name == "nobody-here"
    assert "msbvm ls" in str(e.value)
    with pytest.raises(msbvm.NotFoundError):
        run(msbvm.Sandbox.remove_named("nobody-here"))
    # The synchronous twin raises the same classes.
    with pytest.raises(msbvm.NotFoundError):
        msbvm.sync.Sandbox.get("nobody-here")


@pytest.mark.parametrize("name", ["", "Has Space", "../up", "a/b", "x" * 300, "UPPER"])
def test_bad_names_are_refused_before_anything_starts(name, empty_home):
    with pytest.raises(msbvm.InvalidNameError):
        run(msbvm.Sandbox.create(name))
    assert list(empty_home.iterdir()) == []


@pytest.mark.parametrize(
    "options",
    [
        {"cpus": 0},
        {"cpus": 255},
        {"cpus": -1},
        {"cpus": 10**30},
        {"memory": 1},
        {"memory": -5},
        {"memory": 10**12},
        {"ready_timeout": -1.0},
        {"ready_timeout": math.nan},
        {"ready_timeout": math.inf},
        {"volumes": ["no-colon"]},
    ],
)
def test_bad_options_are_invalidconfigerror_and_start_nothing(options, empty_home):
    with pytest.raises(msbvm.InvalidConfigError):
        run(msbvm.Sandbox.create("fine", **options))
    assert not (empty_home / "sandboxes" / "fine").exists()


def test_wrong_types_are_typeerrors():
    with pytest.raises(TypeError):
        run(msbvm.Sandbox.create("fine", cpus="two"))
    with pytest.raises(TypeError):
        run(msbvm.Sandbox.create("fine", env={"A": 1}))
    with pytest.raises(TypeError):
        msbvm._argv(["ls", 3])


def test_a_command_string_is_one_program_not_a_shell_line():
    assert msbvm._argv("ls") == ["ls"]
    assert msbvm._argv("echo hi") == ["echo hi"]
    assert msbvm._argv(("echo", "hi")) == ["echo", "hi"]


def test_volumes_take_text_or_tuples():
    assert msbvm._volume("/h:/g:ro") == "/h:/g:ro"
    assert msbvm._volume(("/h", "/g")) == "/h:/g"
    assert msbvm._volume(("/h", "/g", True)) == "/h:/g:ro"
    assert msbvm._volume(("/h", "/g", False)) == "/h:/g"


def test_a_missing_runtime_binary_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("MSBVM_BIN", "/nonexistent/msbvm")
    with pytest.raises(msbvm.RuntimeMissingError) as e:
        run(msbvm.Sandbox.create("fine"))
    assert "MSBVM_BIN" in str(e.value)


def test_list_sandboxes_of_an_empty_home_is_empty():
    assert msbvm.list_sandboxes() == []


def test_the_wheel_points_msbvm_bin_at_its_own_runtime():
    bundled = Path(msbvm.__file__).parent / "bin" / "msbvm"
    if not bundled.is_file():
        pytest.skip("this build of the package carries no runtime binary")
    env = {k: v for k, v in os.environ.items() if k != "MSBVM_BIN"}
    out = subprocess.run(
        [sys.executable, "-c", "import msbvm, os; print(os.environ['MSBVM_BIN'])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(bundled.resolve())
    assert (bundled.parent / "msbvm-agent").is_file()


class FakeNativeStream:
    """Stands in for the native ExecStream: replays events, records control calls."""

    def __init__(self, events):
        self.events = list(events)
        self.pid = 42
        self.calls = []

    async def next_event(self):
        return self.events.pop(0) if self.events else None

    async def write_stdin(self, data):
        self.calls.append(("stdin", data))

    async def signal(self, n):
        self.calls.append(("signal", n))


class Ev:
    def __init__(self, kind, data=b"", exit_code=None):
        self.kind, self.data, self.exit_code, self.pid = kind, data, exit_code, None


def test_exec_stream_iterates_to_exited_and_wait_collects():
    native = FakeNativeStream(
        [Ev("started"), Ev("stdout", b"a"), Ev("stderr", b"e"), Ev("stdout", b"b"), Ev("exited", exit_code=3)]
    )
    stream = msbvm.ExecStream(native)
    assert stream.pid == 42
    code, out, err = run(stream.wait())
    assert (code, out, err) == (3, b"ab", b"e")
    # After "exited" the iterator is done, even if asked again.
    async def again():
        return [e async for e in stream]
    assert run(again()) == []


def test_exec_stream_encodes_text_stdin_and_passes_signals():
    native = FakeNativeStream([])
    stream = msbvm.ExecStream(native)
    run(stream.write_stdin("hé"))
    run(stream.signal(15))
    assert native.calls == [("stdin", "hé".encode()), ("signal", 15)]


def test_the_stubs_cover_the_native_module():
    stub = ast.parse((Path(_native.__file__).parent / "_native.pyi").read_text())
    stubbed = {}
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            stubbed.setdefault(None, set()).add(node.name)
        elif isinstance(node, ast.ClassDef):
            stubbed[node.name] = {
                n.name if isinstance(n, ast.FunctionDef) else n.target.id
                for n in node.body
                if isinstance(n, (ast.FunctionDef, ast.AnnAssign))
            }
    functions = {n for n, v in vars(_native).items() if inspect.isbuiltin(v)}
    assert functions == stubbed[None]
    classes = {n for n, v in vars(_native).items() if isinstance(v, type) and n[0].isupper() and not n.endswith("Error")}
    assert classes == {n for n in stubbed if n is not None}
    for cls in classes:
        public = {n for n in dir(getattr(_native, cls)) if not n.startswith("_")}
        assert public == stubbed[cls], cls


def test_the_package_is_typed():
    assert (Path(msbvm.__file__).parent / "py.typed").is_file()


def test_a_secrets_value_stays_out_of_its_repr():
    s = msbvm.Secret("API_KEY", "hunter2-very-secret", hosts=["api.example.com"])
    assert "hunter2" not in repr(s)
    assert "API_KEY" in repr(s)


def test_bad_secrets_are_refused_before_anything_starts(empty_home):
    for secret in [
        msbvm.Secret("bad name", "v", hosts=["api.example.com"]),
        msbvm.Secret("OK", "v", hosts=["bad host/"]),
    ]:
        with pytest.raises(msbvm.InvalidConfigError):
            run(msbvm.Sandbox.create("fine", secrets=[secret]))
    with pytest.raises(TypeError):
        run(msbvm.Sandbox.create("fine", secrets=[("A", "b")]))
    assert not (empty_home / "sandboxes" / "fine").exists()


def test_secret_from_env(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "t0k")
    assert msbvm.Secret.from_env("MY_TOKEN", ["x.example"]).value == "t0k"
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(msbvm.InvalidConfigError):
        msbvm.Secret.from_env("MY_TOKEN")


def test_bad_published_ports_are_refused(empty_home):
    with pytest.raises(msbvm.InvalidConfigError):
        run(msbvm.Sandbox.create("fine", publish=["nonsense"]))


def test_spawn_grants_convert_field_by_field():
    g = msbvm.SpawnGrant(2, cpus=3, memory=512, images=["alpine"], net_allow=["host"], depth=2, secrets=["K"])
    assert g._native() == (2, 3, 512, ["alpine"], ["host"], 2, ["K"])


def test_forking_a_missing_snapshot_is_snapshotnotfounderror():
    with pytest.raises(msbvm.SnapshotNotFoundError):
        run(msbvm.Sandbox.fork("no-such-snapshot"))


def test_pulling_from_an_unreachable_registry_is_imageerror():
    events = []
    with pytest.raises(msbvm.ImageError):
        run(msbvm.pull("127.0.0.1:9/nothing:latest", progress=events.append, plain_http=["127.0.0.1:9"]))
    with pytest.raises(msbvm.ImageError):
        run(msbvm.pull("NOT A REFERENCE"))


def test_peers_outside_a_sandbox_say_so():
    from msbvm import peer

    assert peer.in_sandbox() is False
    with pytest.raises(msbvm.NotInSandboxError):
        run(peer.Peers.connect())


def test_pulling_the_embedded_default_image_needs_no_network(empty_home):
    events = []
    info = run(msbvm.pull("msbvm-default:latest", progress=events.append))
    assert info.reference.endswith("msbvm-default:latest")
    assert info.digest.startswith("sha256:")
    assert info.layers >= 1
    assert (empty_home / "images").is_dir()


@pytest.mark.parametrize(
    "options",
    [
        {"tmpfs": ["relative/path"]},
        {"tmpfs": ["/"]},
        {"tmpfs": ["/scratch:lots"]},
        {"tmpfs": ["/scratch:0"]},
        {"plugins": ["no-such-plugin"]},
        {"plugins": [""]},
        {"plugins": [":config-without-a-plugin"]},
        {"tls_ca": "everyone"},
        {"tls_ca": ""},
        {"tls_intercept": ["bad host/"]},
        {"tls_bypass": ["bad host/"]},
        {"tls_intercept": ["api.example.com"], "network": False},
        {"tls_upstream_ca": "/nonexistent/ca.pem"},
        {"mtu": 100},
        {"mtu": 65521},
        {"mtu": -1},
        {"mtu": 10**30},
        {"dns_servers": ["not-an-address"]},
        {"dns_servers": ["1.1.1.1:99999"]},
        {"dns_servers": ["1.1.1.1", "10.0.0.2:dns"]},
    ],
)
def test_bad_network_and_mount_options_are_invalidconfigerror(options, empty_home, monkeypatch):
    # Should a bad option get through, the missing runtime stops create, not a boot.
    monkeypatch.setenv("MSBVM_BIN", "/nonexistent/msbvm")
    with pytest.raises(msbvm.InvalidConfigError):
        run(msbvm.Sandbox.create("fine", **options))
    assert not (empty_home / "sandboxes" / "fine").exists()
    # The synchronous twin passes the same options through.
    with pytest.raises(msbvm.InvalidConfigError):
        msbvm.sync.Sandbox.create("fine", **options)


@pytest.mark.parametrize(
    "options",
    [
        {"mtu": "1500"},
        {"mtu": 1500.0},
        {"tmpfs": "/scratch"},
        {"plugins": "audit"},
        {"dns_servers": "1.1.1.1"},
        {"dns_servers": [1]},
        {"tls_ca": 1},
        {"tls_upstream_ca": b"/ca.pem"},
    ],
)
def test_wrongly_typed_new_options_are_typeerrors(options):
    with pytest.raises(TypeError):
        run(msbvm.Sandbox.create("fine", **options))


def test_good_network_and_mount_options_get_as_far_as_the_runtime(tmp_path, monkeypatch):
    # Every option below passes its checks: what stops create is the missing runtime.
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("MSBVM_BIN", "/nonexistent/msbvm")
    options = dict(
        tmpfs=["/scratch", "/big:64m"],
        plugins=["rate-limit", "./my-plugin:any config"],
        tls_intercept=["api.example.com", "*.example.org"],
        tls_bypass=["pinned.example.com"],
        tls_upstream_ca=ca,
        tls_ca="sandbox",
        mtu=9000,
        dns_servers=["1.1.1.1", "10.0.0.2:5353", "[2606:4700::1111]:53", "::1"],
    )
    with pytest.raises(msbvm.RuntimeMissingError):
        run(msbvm.Sandbox.create("fine", **options))
    for upstream in ([ca, str(ca)], str(ca)):
        with pytest.raises(msbvm.RuntimeMissingError):
            run(msbvm.Sandbox.create("fine", tls_intercept=["all"], tls_upstream_ca=upstream, tls_ca="user"))


def test_the_new_create_options_are_in_both_apis_signatures():
    new = {"tmpfs", "plugins", "tls_intercept", "tls_bypass", "tls_upstream_ca", "tls_ca", "mtu", "dns_servers"}
    assert new <= set(inspect.signature(msbvm.Sandbox.create).parameters)
    stub = ast.parse((Path(_native.__file__).parent / "_native.pyi").read_text())
    create = next(n for n in stub.body if isinstance(n, ast.FunctionDef) and n.name == "create")
    assert new <= {a.arg for a in create.args.kwonlyargs}


class FakeNativeSandbox:
    """Stands in for the native Sandbox: records what the Python layer hands it and answers
    in the native module's forms (JSON text)."""

    name = "fake"
    pid = 7

    def __init__(self):
        self.calls = []

    async def request(self, kind, data, timeout):
        self.calls.append(("request", kind, data, timeout))
        return json.dumps({"type": "answer", "data": {"ok": True}, "reply_to": "abc", "pid": 3})

    async def reply(self, event, kind, data):
        self.calls.append(("reply", event, kind, data))

    async def network_stats(self):
        return json.dumps({"tcp": {"flows": 2}, "bytes_in": 10})

    def network_events(self):
        return json.dumps([{"kind": "flow", "allowed": True}, {"kind": "dns", "name": "x"}])

    def network_event_stream(self):
        return FakeNativeNetEvents()

    async def dump_memory(self, path):
        self.calls.append(("dump_memory", path))
        return 4096


class FakeNativeNetEvents:
    def __init__(self):
        self.batches = [[{"kind": "flow"}], [], [{"kind": "dns"}, {"kind": "http"}]]

    def poll(self):
        return json.dumps(self.batches.pop(0) if self.batches else [])


def test_events_network_and_memory_methods_convert_json_both_ways(tmp_path):
    native = FakeNativeSandbox()
    sb = msbvm.Sandbox(native)
    answer = run(sb.request("ask", {"q": 1}, timeout=2.5))
    assert answer == {"type": "answer", "data": {"ok": True}, "reply_to": "abc", "pid": 3}
    event = {"type": "question", "data": [1], "id": "i1", "connection": 4, "pid": 9}
    run(sb.reply(event, "answer", {"a": 2}))
    run(sb.request("ping"))
    assert native.calls == [
        ("request", "ask", '{"q": 1}', 2.5),
        ("reply", json.dumps(event), "answer", '{"a": 2}'),
        ("request", "ping", "null", 10.0),
    ]
    assert run(sb.network_stats()) == {"tcp": {"flows": 2}, "bytes_in": 10}
    assert sb.network_events() == [{"kind": "flow", "allowed": True}, {"kind": "dns", "name": "x"}]
    stream = sb.network_event_stream()
    assert isinstance(stream, msbvm.NetEventStream)
    assert [stream.poll(), stream.poll(), stream.poll(), stream.poll()] == [
        [{"kind": "flow"}],
        [],
        [{"kind": "dns"}, {"kind": "http"}],
        [],
    ]
    assert run(sb.dump_memory(tmp_path / "mem.bin")) == 4096
    assert native.calls[-1] == ("dump_memory", str(tmp_path / "mem.bin"))
    with pytest.raises(TypeError):
        run(sb.reply(["not", "an", "event"], "answer"))
    with pytest.raises(TypeError):
        run(sb.request("ask", object()))


def test_the_sync_twin_has_the_events_network_and_memory_methods(tmp_path):
    native = FakeNativeSandbox()
    sb = msbvm.sync.Sandbox(msbvm.Sandbox(native))
    assert sb.request("ask", [1], timeout=1)["type"] == "answer"
    sb.reply({"type": "q", "id": "1", "connection": 2}, "a")
    assert sb.network_stats()["bytes_in"] == 10
    assert len(sb.network_events()) == 2
    assert sb.network_event_stream().poll() == [{"kind": "flow"}]
    assert sb.dump_memory(tmp_path / "m") == 4096
    assert [c[0] for c in native.calls] == ["request", "reply", "dump_memory"]
    # Every public method of the async Sandbox has its blocking twin.
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_")}  # noqa: E731
    assert public(msbvm.Sandbox) <= public(msbvm.sync.Sandbox)


def test_the_sync_twin_passes_results_and_errors_through():
    async def answer():
        await asyncio.sleep(0)
        return 42

    async def fail():
        raise ValueError("no")

    assert msbvm.sync._run(answer()) == 42
    with pytest.raises(ValueError):
        msbvm.sync._run(fail())
    with pytest.raises(TypeError):
        msbvm.sync._run(42)  # not a coroutine: an error, not a hang


def test_ctrl_c_in_the_sync_twin_cancels_the_call_it_interrupts():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started, cancelled = threading.Event(), threading.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # os.kill from another thread is what Ctrl-C is: a signal to the process, whichever of its
    # threads the kernel hands it to (signal.raise_signal would only work from this one).
    timer = threading.Timer(0.5, lambda: started.wait(5) and os.kill(os.getpid(), signal.SIGINT))
    began = time.monotonic()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            msbvm.sync._run(slow())
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - began < 5
    # _run waited for the cancelled task to end before raising.
    assert cancelled.is_set()
    # The loop is still there for the next call.
    assert msbvm.sync._run(asyncio.sleep(0, result="after")) == "after"
