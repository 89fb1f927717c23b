"""The SDK conformance scenario in Python, run in L1 against real sandboxes by
tests/tests/sdk_nested.rs: create, exec, stream (10 MiB), stdin, signals, a cancelled
exec, files, a network policy change, events both ways, the synchronous twin, remove.

Prints one `CHECK py.name value` line per step (the values the test expects), and never stops at
a failed step: an exception in one step is printed as that step's value.
"""

import asyncio
import os
import signal
import socket
import sys
import tempfile
import traceback

import msbvm
import msbvm.sync

HOST_PAGE = "http://host.msbvm.internal:8000/"
# The secret's value, which must never reach the guest.
SECRET_VALUE = "py-secret-value-5be1c0d2"


def grep_file(needle, path):
    """Whether L1's grep finds needle in the file: "present", "absent" or "grep-error"."""
    import subprocess

    rc = subprocess.run(["grep", "-q", "-F", needle, path]).returncode
    return {0: "present", 1: "absent"}.get(rc, "grep-error")


# A guest shell that answers every `@P@.ask` host event with `@P@.answer` through the guest
# CLI's `msbvm reply` (the same in every language's scenario).
ANSWERER = (
    "msbvm events -f --type @P@.ask | while read -r ev; do msbvm reply "
    "\"$(echo \"$ev\" | sed -n 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/p')\" "
    "@P@.answer '{\"a\":3}'; done"
)


def is_denial(e):
    """Whether a network event records a denial (a flow, or a DNS query policy refused)."""
    return e.get("event") == "flow_denied" or (e.get("event") == "dns_query" and e.get("allowed") is False)


def check(name, value):
    print(f"CHECK py.{name} {value}", flush=True)


async def step(name, coro):
    try:
        check(name, await coro)
    except Exception as e:  # the value says what failed
        traceback.print_exc()
        check(name, f"error:{type(e).__name__}")


async def wget_rc(sb):
    r = await sb.exec(["wget", "-q", "-T", "5", "-O", "/dev/null", HOST_PAGE])
    return r.exit_code


async def scenario():
    async with msbvm.Sandbox.create(
        "py-conf",
        memory=256,
        env={"GREETING": "hi"},
        net_allow=["host"],
        tmpfs=["/scratch:8m"],
        secrets=[msbvm.Secret("API_KEY", SECRET_VALUE, hosts=["api.example.com"])],
        plugins=["audit:path=/tmp/py-audit.jsonl"],
    ) as sb:
        check("created", sb.name)

        async def exec_basic():
            r = await sb.exec(["sh", "-c", "echo $GREETING; echo err >&2; exit 3"])
            return f"{r.stdout!r},{r.stderr!r},{r.exit_code}"

        await step("exec", exec_basic())

        async def exec_timeout():
            r = await sb.exec(["sleep", "30"], timeout=1)
            return f"{r.timed_out},{r.exit_code}"

        await step("exec_timeout", exec_timeout())

        async def stream_10mib():
            s = await sb.exec_stream(["head", "-c", str(10 << 20), "/dev/zero"])
            total, kinds, code = 0, set(), None
            async for ev in s:
                kinds.add(ev.kind)
                if ev.kind == "stdout":
                    total += len(ev.data)
                elif ev.kind == "exited":
                    code = ev.exit_code
            return f"{total},{code},{'started' in kinds}"

        await step("stream", stream_10mib())

        async def stdin_roundtrip():
            s = await sb.exec_stream(["cat"])
            await s.write_stdin("ping ")
            await s.write_stdin(b"pong")
            await s.close_stdin()
            code, out, _ = await s.wait()
            return f"{out.decode()},{code}"

        await step("stdin", stdin_roundtrip())

        async def signalled():
            s = await sb.exec_stream(["sleep", "300"])
            await s.signal(signal.SIGTERM)
            code, _, _ = await s.wait()
            return code

        await step("signal", signalled())

        async def cancelled():
            try:
                await asyncio.wait_for(sb.exec(["sleep", "301"]), 3)
                return "not-cancelled"
            except asyncio.TimeoutError:
                pass
            # The dropped call closed its connection; the agent kills the process group.
            for _ in range(30):
                r = await sb.exec(["sh", "-c", "ps | grep -c '[s]leep 301'"])
                if r.stdout.strip() == b"0":
                    return "nothing-left"
                await asyncio.sleep(1)
            return "still-running"

        await step("cancelled", cancelled())

        async def files():
            await sb.write("/tmp/f.txt", "data")
            got = await sb.read("/tmp/f.txt")
            names = [e.name for e in await sb.list("/tmp")]
            st = await sb.stat("/tmp/f.txt")
            await sb.mkdir("/tmp/a/b", parents=True)
            await sb.remove_path("/tmp/a", recursive=True)
            try:
                await sb.read("/tmp/a/b")
                missing = "found"
            except msbvm.GuestFileError as e:
                missing = e.kind
            with tempfile.TemporaryDirectory() as d:
                src = os.path.join(d, "in.txt")
                with open(src, "w") as f:
                    f.write("from-host")
                await sb.copy_in(src, "/tmp/in.txt")
                await sb.copy_out("/tmp/in.txt", os.path.join(d, "out.txt"))
                with open(os.path.join(d, "out.txt")) as f:
                    copied = f.read()
            return f"{got.decode()},{'f.txt' in names},{st.kind}:{st.size},{missing},{copied}"

        await step("files", files())

        async def snapshot_and_fork():
            await sb.write("/tmp/before-snapshot", "kept")
            info = await sb.snapshot("py-snap")
            forks = await msbvm.Sandbox.fork("py-snap", name="py-fork", memory=256)
            got = [(await f.read("/tmp/before-snapshot")).decode() for f in forks]
            r = await forks[0].exec(["echo", "forked"])
            for f in forks:
                await f.remove()
            return f"{info.source},{len(forks)},{got[0]},{r.stdout.decode().strip()}"

        await step("fork", snapshot_and_fork())

        async def published():
            await sb.exec(["sh", "-c", "mkdir -p /tmp/www && echo published > /tmp/www/index.html"])
            server = await sb.exec_stream(["httpd", "-f", "-p", "8080", "-h", "/tmp/www"])
            addr = await sb.publish("127.0.0.1:0:8080")
            host, port = addr.rsplit(":", 1)
            body = b""
            for _ in range(30):
                try:
                    with socket.create_connection((host, int(port)), timeout=5) as c:
                        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        while chunk := c.recv(4096):
                            body += chunk
                    if b"published" in body:
                        break
                except OSError:
                    pass
                await asyncio.sleep(1)
            await server.signal(signal.SIGTERM)
            await server.wait()
            return f"{host},{int(port) > 0},{body.count(b'published')}"

        await step("publish", published())

        async def policy():
            before = await wget_rc(sb)
            await sb.set_network_policy(default_allow=False)
            denied = await wget_rc(sb)
            await sb.set_network_policy(default_allow=False, allow=["host"])
            after = await wget_rc(sb)
            return f"{before},{'denied' if denied != 0 else 'allowed'},{after}"

        await step("policy", policy())

        async def netlog():
            stream = sb.network_event_stream()
            stream.poll()
            await sb.set_network_policy(default_allow=False)
            await wget_rc(sb)
            polled = []
            for _ in range(10):
                polled += stream.poll()
                if any(map(is_denial, polled)):
                    break
                await asyncio.sleep(0.5)
            await sb.set_network_policy(default_allow=False, allow=["host"])
            logged = any(map(is_denial, sb.network_events()))
            stats = await sb.network_stats()
            counted = stats.get("flows_denied", 0) > 0
            return ",".join([
                "denied-logged" if logged else "missing",
                "denied-polled" if any(map(is_denial, polled)) else "missing",
                "counted" if counted else "uncounted",
            ])

        await step("netlog", netlog())

        async def secret():
            r = await sb.exec(["sh", "-c", "echo $API_KEY"])
            seen = r.stdout.decode().strip()
            word = "unset" if not seen else "leaked" if SECRET_VALUE in seen else "placeholder"
            dump = os.path.join(tempfile.gettempdir(), "py-conf.ram")
            if os.path.exists(dump):
                os.remove(dump)
            size = await sb.dump_memory(dump)
            found = f"{grep_file(seen, dump)},{grep_file(SECRET_VALUE, dump)}"
            os.remove(dump)
            return f"{word},{size >> 20},{found}"

        await step("secret", secret())

        async def tmpfs():
            r = await sb.exec([
                "sh", "-c",
                "grep -c ' /scratch tmpfs ' /proc/mounts; df -k /scratch | tail -1 | awk '{print $2}'",
            ])
            return r.stdout.decode().strip().replace("\n", ",")

        await step("tmpfs", tmpfs())

        async def plugin():
            await sb.exec(["echo", "audited-py"])
            for _ in range(20):
                try:
                    with open("/tmp/py-audit.jsonl") as f:
                        lines = [l for l in f if '"kind":"exec"' in l and "audited-py" in l]
                except FileNotFoundError:
                    lines = []
                if lines:
                    return "audited"
                await asyncio.sleep(0.5)
            return "unaudited"

        await step("plugin", plugin())

        async def reply():
            asks = await sb.events("py.ask")
            guest = await sb.exec_stream(["msbvm", "request", "py.ask", '{"q":1}', "--timeout", "60"])
            ask = await asyncio.wait_for(asks.__anext__(), 60)
            await sb.reply(ask, "py.answer", {"a": 2})
            code, out, _ = await guest.wait()
            return f"{code},{out.count(b'py.answer')}"

        await step("reply", reply())

        async def request():
            guest = await sb.exec_stream(["sh", "-c", ANSWERER.replace("@P@", "py")])
            # The guest subscribes on its own schedule: ask until it answers.
            answer = None
            for _ in range(20):
                try:
                    answer = await sb.request("py.ask", {"q": 2}, timeout=3)
                    break
                except msbvm.AgentTimeoutError:
                    pass
            await guest.signal(signal.SIGTERM)
            await guest.wait()
            try:
                await sb.request("py.nobody", timeout=1)
                unanswered = "answered"
            except TimeoutError as e:  # AgentTimeoutError is one
                unanswered = type(e).__name__.removesuffix("Error")
            if answer is None:
                return f"no-answer,{unanswered}"
            return f"{answer['type']},{answer['data']['a']},{unanswered}"

        await step("request", request())

        async def events_from_guest():
            stream = await sb.events("py.*")
            await sb.exec(["msbvm", "emit", "py.step", '{"i":1}'])
            ev = await asyncio.wait_for(stream.__anext__(), 60)
            return f"{ev['type']},{ev['data']['i']},{ev['pid'] is not None}"

        await step("events_in", events_from_guest())

        async def events_to_guest():
            s = await sb.exec_stream(["msbvm", "events", "-n", "1", "--type", "py.reply"])
            waiting = asyncio.ensure_future(s.wait())
            # The guest subscribes asynchronously: send until it has one.
            for _ in range(60):
                await sb.emit("py.reply", {"ok": 1})
                done, _ = await asyncio.wait({waiting}, timeout=1)
                if done:
                    break
            code, out, _ = await asyncio.wait_for(waiting, 10)
            return f"{code},{out.count(b'py.reply')}"

        await step("events_out", events_to_guest())

        async def errors():
            try:
                await msbvm.Sandbox.create("py-conf")
                return "created-twice"
            except msbvm.NameInUseError as e:
                in_use = e.name
            try:
                await msbvm.Sandbox.get("py-none")
                return "found"
            except msbvm.NotFoundError:
                return f"{in_use},notfound"

        await step("errors", errors())

        attached = await msbvm.Sandbox.get("py-conf")
        r = await attached.exec(["echo", "attached"])
        check("get", r.stdout.decode().strip())

    names = [i.name for i in msbvm.list_sandboxes()]
    check("removed", "py-conf" not in names)


def sync_twin():
    with msbvm.sync.Sandbox.create("py-sync", memory=256, network=False) as sb:
        r = sb.exec(["echo", "sync"])
        s = sb.exec_stream(["sh", "-c", "echo a; echo b >&2"])
        kinds = [e.kind for e in s]
        sb.write("/tmp/s", b"x")
        check("sync", f"{r.stdout.decode().strip()},{kinds[0]},{kinds[-1]},{sb.read('/tmp/s').decode()}")
    check("sync_removed", "py-sync" not in [i.name for i in msbvm.list_sandboxes()])


async def main():
    await scenario()
    # The synchronous twin, called from inside a running event loop as a notebook does.
    sync_twin()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception:
        traceback.print_exc()
        check("scenario", "crashed")
        sys.exit(1)
    check("scenario", "done")
