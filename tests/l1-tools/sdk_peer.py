"""The Python peer API inside a sandbox, run by tests/tests/sdk_nested.rs in a sandbox that was
given a spawn grant and the host's Python: it creates a child, runs a command in it with stdin,
writes and reads a child's file, lists the children, removes the child, and has bad numbers
refused. Prints one `CHECK py.peer ...` line with the same values as sdk_peer.js's."""

import asyncio
import sys
import traceback

from msbvm.errors import InvalidConfigError
from msbvm.peer import Peers, in_sandbox


async def main():
    peers = await Peers.connect()
    # Numbers outside what create() takes are refused before anything reaches the host.
    refused = []
    for bad in ({"cpus": -1}, {"cpus": 0}, {"memory": 1}):
        try:
            await peers.create("pybad", **bad)
            refused.append("created")
        except InvalidConfigError:
            refused.append("refused")
        except Exception as e:
            refused.append(f"other:{type(e).__name__}")
    await peers.create("pyc", memory=256, network=False)
    out = await peers.exec("pyc", ["sh", "-c", "cat; echo from-child; exit 4"], stdin=b"in-")
    await peers.write("pyc", "/tmp/x", b"data")
    got = await peers.read("pyc", "/tmp/x")
    names = [p.name for p in await peers.list()]
    await peers.remove("pyc")
    after = [p.name for p in await peers.list()]
    return ",".join([
        "inside" if in_sandbox() else "outside",
        str(out.exit_code),
        out.stdout.decode().strip(),
        got.decode(),
        "listed" if "pyc" in names else f"unlisted:{names}",
        "left" if "pyc" in after else "gone",
        "/".join(dict.fromkeys(refused)),
    ])


if __name__ == "__main__":
    try:
        print(f"CHECK py.peer {asyncio.run(main())}", flush=True)
    except Exception as e:
        traceback.print_exc()
        print(f"CHECK py.peer error:{type(e).__name__}", flush=True)
        sys.exit(1)
