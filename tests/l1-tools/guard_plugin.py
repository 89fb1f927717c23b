"""The nested plugin suite's out-of-process plugin, on the reference client (msbvm_plugin.py,
beside it in L1): denies `rm -rf /`, rewrites GREETING in every other command's environment,
answers `slowcmd` too late and crashes on `crashme`. On the network it closes port 8001,
refuses lookups of blocked.example and marks every inspected HTTP request with `x-plugin`."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from msbvm_plugin import Plugin, change, deny  # noqa: E402

plugin = Plugin("guard")


@plugin.on("exec.before")
def before(exec_):
    argv = exec_["argv"]
    if argv[:3] == ["rm", "-rf", "/"]:
        return deny("rm -rf / is not allowed here")
    if argv[:1] == ["slowcmd"]:
        time.sleep(8)
    if argv[:1] == ["crashme"]:
        os._exit(3)
    env = [kv for kv in exec_["env"] if kv[0] != "GREETING"]
    exec_["env"] = env + [["GREETING", "rewritten-by-guard"]]
    return change(exec_)


@plugin.on("net.flow")
def flow(flow_):
    if flow_["dst"].endswith(":8001"):
        return deny("port 8001 is closed by the guard")
    return None


@plugin.on("net.dns")
def dns(query):
    if query["name"] == "blocked.example":
        return deny("no lookups of blocked.example")
    return None


@plugin.on("net.http")
def http(request):
    request["headers"].append(["x-plugin", "guard saw " + request["path"]])
    return change(request)


plugin.run()
