"""Exceptions raised by msbvm: one class per error kind of the Rust SDK (``msbvm_sdk::Error``).

Every class derives from :class:`MsbvmError`; several also derive from the built-in class a
Python program would catch for the same situation (``LookupError`` for a missing sandbox,
``TimeoutError`` for timeouts, ``ValueError`` for bad arguments, ``ConnectionError`` for a lost
connection), so ``except TimeoutError`` works as expected.

The native module picks the class and sets the attributes documented on each.
"""

from __future__ import annotations


class MsbvmError(Exception):
    """Base class of every msbvm error; ``str(e)`` is the full message, with the fix."""


class ImageError(MsbvmError):
    """An image could not be pulled, unpacked or found."""


class InvalidNameError(MsbvmError, ValueError):
    """A sandbox name is not allowed. ``name``: the name."""


class NameInUseError(MsbvmError):
    """A sandbox of that name is already running. ``name``: the name."""


class NotFoundError(MsbvmError, LookupError):
    """No sandbox has that name. ``name``: the name."""


class SnapshotNotFoundError(MsbvmError, LookupError):
    """No snapshot has that name. ``name``: the name."""


class NotRunningError(MsbvmError):
    """The sandbox exists but is not running. ``name``, ``status`` ("stopped", "failed", ...)."""


class InvalidConfigError(MsbvmError, ValueError):
    """An argument or the sandbox configuration is invalid (checked before anything starts)."""


class NoKvmError(MsbvmError):
    """This host cannot run VMs (no usable /dev/kvm); the message says why and what to do."""


class KernelError(MsbvmError):
    """The guest kernel is unavailable (``msbvm kernel build`` makes it)."""


class AgentMissingError(MsbvmError):
    """The guest agent binary (``msbvm-agent``) was not found or is not static."""


class BusyboxMissingError(MsbvmError):
    """The static busybox for the guest was not found."""


class RuntimeMissingError(MsbvmError):
    """The ``msbvm`` binary that runs sandboxes was not found (set ``MSBVM_BIN``)."""


class GuestDiedError(MsbvmError):
    """The guest died while booting. ``console_tail``: the end of its console."""


class VmError(MsbvmError):
    """The VM could not be started."""


class ProtocolMismatchError(MsbvmError):
    """The guest agent is from another msbvm version."""


class ProtocolError(MsbvmError):
    """A peer (the agent or the runtime) broke the protocol; treated as hostile, never trusted."""


class AgentError(MsbvmError):
    """The guest agent refused the request."""


class DeniedError(MsbvmError, PermissionError):
    """A plugin denied the request."""


class GuestFileError(MsbvmError, OSError):
    """A file operation failed in the guest. ``kind``: "not_found", "permission_denied",
    "already_exists", "not_a_directory", "is_a_directory", "directory_not_empty",
    "invalid_input", "limit_exceeded" or "other"."""


class AgentTimeoutError(MsbvmError, TimeoutError):
    """The guest agent did not answer in time."""


class LimitExceededError(MsbvmError):
    """The sandbox sent more than a limit allows (output, message size, ...)."""


class ConnectionLostError(MsbvmError, ConnectionError):
    """The connection to the sandbox ended before the operation did (the sandbox stopped?)."""


class ReadyTimeoutError(MsbvmError, TimeoutError):
    """The sandbox did not become ready in time. ``console_tail``, ``where_it_was``: what the
    guest printed and where it was when it was stopped."""


class RuntimeFailedError(MsbvmError):
    """The sandbox's runtime process failed. ``log_tail``: the end of its log."""


class HostIoError(MsbvmError, OSError):
    """A host-side file or socket operation failed."""


class CorruptStateError(MsbvmError):
    """A sandbox's state directory is corrupt; remove it."""


class NotInSandboxError(MsbvmError):
    """A call meant for code inside a sandbox was made outside one."""


class SpawnError(MsbvmError):
    """A request to spawn a peer sandbox failed."""


__all__ = [name for name in dir() if name.endswith("Error")]
