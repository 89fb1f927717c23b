"""Reference client for msbvm's out-of-process plugin protocol (PROTOCOL.md, version 1).

A plugin is a program the sandbox starts; it talks JSON lines on stdin and stdout. This module
does the talking; a plugin only says which hooks it handles::

    from msbvm_plugin import Plugin, deny, change

    plugin = Plugin("guard")

    @plugin.on("exec.before")
    def before_exec(exec_):
        if exec_["argv"][:3] == ["rm", "-rf", "/"]:
            return deny("rm -rf / is not allowed")
        exec_["env"].append(["GUARDED", "1"])
        return change(exec_)

    @plugin.on("exec.after")
    def after_exec(ended):
        plugin.log(f"{ended['argv'][0]} ended with {ended['code']}")

    plugin.run()

Decision hooks (exec.before, fs, fs.read, fs.write, net.flow, net.dns, net.http) return
``None`` (continue), ``deny(reason)``, or ``change(data)`` (continue with the changed exec,
request, or file data: ``data`` is base64). Other hooks
return nothing. ``plugin.config`` and ``plugin.sandbox`` hold what the hello said. Only the
standard library is used; Python 3.8 or later.
"""

import json
import sys

PROTOCOL_VERSION = 1

DECISION_HOOKS = {"exec.before", "fs", "fs.read", "fs.write", "net.flow", "net.dns", "net.http"}
HOOKS = DECISION_HOOKS | {
    "lifecycle",
    "exec.output",
    "exec.after",
    "net.dns_answer",
    "net.bytes",
    "event",
}


class _Deny:
    def __init__(self, reason):
        self.reason = str(reason)


class _Change:
    def __init__(self, data):
        self.data = data


def deny(reason):
    """A decision that refuses, with ``reason``."""
    return _Deny(reason)


def change(data):
    """A decision that lets it through with ``data`` (the changed exec or HTTP request)."""
    return _Change(data)


class Plugin:
    """One plugin: handlers per hook, and the loop that serves them."""

    def __init__(self, name, limits=None):
        """``limits``: what the sandbox enforces itself for this plugin, such as
        ``{"net_bytes_per_sec": 1048576}`` (see PROTOCOL.md)."""
        self.name = name
        self.limits = limits or {}
        self.config = None
        self.sandbox = None
        self._handlers = {}
        self._out = sys.stdout

    def on(self, hook):
        """Decorator: handle ``hook`` (a wire name such as ``"exec.before"``)."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}")

        def register(fn):
            self._handlers[hook] = fn
            return fn

        return register

    def log(self, message, level="info"):
        """A line in the sandbox's log."""
        self._send({"type": "log", "level": level, "message": str(message)})

    def _send(self, message):
        self._out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._out.flush()

    def run(self, stdin=None):
        """Serves the sandbox until it says shutdown or closes stdin."""
        stdin = stdin or sys.stdin
        for raw in stdin:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            kind = message.get("type")
            if kind == "hello":
                self.config = message.get("config")
                self.sandbox = message.get("sandbox")
                self._send(
                    {
                        "type": "hello",
                        "protocol": PROTOCOL_VERSION,
                        "name": self.name,
                        "hooks": sorted(self._handlers),
                        "limits": self.limits,
                    }
                )
            elif kind == "decide":
                self._decide(message)
            elif kind == "notify":
                handler = self._handlers.get(message.get("hook"))
                if handler is not None:
                    try:
                        handler(message.get("data"))
                    except Exception as e:  # an observer's bug must not end the plugin
                        self.log(f"{message.get('hook')} handler failed: {e!r}", "warn")
            elif kind == "shutdown":
                return

    def _decide(self, message):
        answer = {"type": "decision", "id": message.get("id"), "verdict": "continue"}
        handler = self._handlers.get(message.get("hook"))
        if handler is not None:
            result = handler(message.get("data"))
            if isinstance(result, _Deny):
                answer["verdict"] = "deny"
                answer["reason"] = result.reason
            elif isinstance(result, _Change):
                answer["data"] = result.data
        self._send(answer)
