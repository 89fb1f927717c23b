"""The nested plugin suite's file plugin, on the reference client: answers reads of
/data/motd itself and writes "secret" as "[redacted]" in files under /data (a volume, so the
paths it sees are the guest's, under the volume's mount point)."""

import base64
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from msbvm_plugin import Plugin, change  # noqa: E402

plugin = Plugin("fsguard")


@plugin.on("fs.read")
def read(r):
    if r["path"] == "/data/motd":
        r["data"] = base64.b64encode(b"answered by fsguard\n").decode()
        return change(r)
    return None


@plugin.on("fs.write")
def write(w):
    if not (w["path"] or "").startswith("/data/"):
        return None
    data = base64.b64decode(w["data"]).replace(b"secret", b"[redacted]")
    w["data"] = base64.b64encode(data).decode()
    return change(w)


plugin.run()
