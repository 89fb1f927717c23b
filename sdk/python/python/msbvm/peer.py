"""Peer sandboxes from inside a sandbox: a Python program running in a guest whose creator
granted spawning (:class:`msbvm.SpawnGrant`) creates, drives and removes sandboxes of its own
through the host, within the grant::

    from msbvm import peer

    async def main():
        peers = await peer.Peers.connect()
        await peers.create("w1", memory=256)
        out = await peers.exec("w1", ["uname", "-r"])
        print(out.stdout.decode())
        await peers.remove("w1")

The host enforces the grant: a request past it raises :class:`msbvm.SpawnError` with the
host's reason. Outside a sandbox, :meth:`Peers.connect` raises
:class:`msbvm.NotInSandboxError`.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Sequence

from . import _native
from ._native import PeerInfo, PeerOutput


def in_sandbox() -> bool:
    """Whether this program runs inside an msbvm sandbox."""
    return _native.in_sandbox()


class Peers:
    """This sandbox's connection to the host's spawn service."""

    def __init__(self, native: Any) -> None:
        self._native = native

    @staticmethod
    async def connect() -> "Peers":
        """Connects to the host's spawn service (inside a sandbox only)."""
        return Peers(await _native.connect_peers())

    async def create(
        self,
        name: str,
        *,
        image: Optional[str] = None,
        cpus: Optional[int] = None,
        memory: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        net_allow: Sequence[str] = (),
        net_deny: Sequence[str] = (),
        network: bool = True,
        allow_spawn: Optional[str] = None,
        secrets: Sequence[str] = (),
    ) -> None:
        """Creates the child ``name`` (within this sandbox's grant). ``secrets`` names this
        sandbox's own secrets the child gets (its own placeholders); ``allow_spawn`` gives the
        child a grant of its own, in the CLI's ``--allow-spawn`` grammar."""
        await self._native.create(
            name,
            image=image,
            cpus=cpus,
            memory=memory,
            env=dict(env) if env is not None else None,
            net_allow=list(net_allow),
            net_deny=list(net_deny),
            network=network,
            allow_spawn=allow_spawn,
            secrets=list(secrets),
        )

    async def exec(self, name: str, argv: Sequence[str], stdin: bytes = b"") -> PeerOutput:
        """Runs ``argv`` in the child ``name`` to its end (``exit_code``, ``stdout``,
        ``stderr``, ``truncated``)."""
        return await self._native.exec(name, list(argv), bytes(stdin))

    async def read(self, name: str, path: str) -> bytes:
        """The child's file ``path``."""
        return await self._native.read_file(name, path)

    async def write(self, name: str, path: str, data: bytes) -> None:
        """Writes the child's file ``path``."""
        await self._native.write_file(name, path, bytes(data))

    async def list(self) -> List[PeerInfo]:  # noqa: A003
        """This sandbox's children."""
        return await self._native.list()

    async def emit(self, name: str, kind: str, data: Any = None) -> None:
        """Sends an event to the child ``name``."""
        await self._native.emit(name, kind, json.dumps(data))

    async def stop(self, name: str) -> None:
        """Stops the child ``name``."""
        await self._native.stop(name)

    async def remove(self, name: str) -> None:
        """Stops and removes the child ``name``."""
        await self._native.remove(name)


__all__ = ["Peers", "PeerInfo", "PeerOutput", "in_sandbox"]
