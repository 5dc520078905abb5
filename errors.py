"""One exception hierarchy for every user-facing failure, mapped to exit codes by the CLI."""


class ActrecError(Exception):
    """A failure the user can act on; the message names the file and the problem."""

    exit_code = 1


class InputError(ActrecError):
    """Bad user input: a missing, unreadable or malformed file or option value."""


class StoreError(ActrecError):
    """A frame or flow store that cannot be read or written (wrong version, corrupt shard, full disk)."""


class DeviceError(ActrecError):
    """A requested device is not available (e.g. --gpu without CUDA)."""

    exit_code = 2


class OutputError(ActrecError):
    """An output that cannot be written (a full disk, a folder gone or read-only); the message names the path,
    says why, and what was kept."""
