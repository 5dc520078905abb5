"""One exception hierarchy for every user-facing failure, mapped to exit codes by the CLI."""


class ActrecError(Exception):
    """A failure the user can act on; the message names the file and the problem."""

    exit_code = 1


class InputError(ActrecError):
    """Bad user input: a missing, unreadable or malformed file or option value."""


class StoreError(ActrecError):
    """A frame or flow store that cannot be read or written (wrong version, corrupt shard, full disk)."""


class StoreReadError(StoreError):
    """One video of a store cannot be read back: a damaged entry (checksum mismatch, undecodable JPEG, failed
    decompression) or a shard that cannot be opened. The message names the shard file, the video and, for an
    entry, its frame or flow index; the same facts are kept as attributes for callers that list bad samples
    (``index`` is None when the whole video or shard is unreadable). It costs only that video: readers of the
    other videos go on."""

    def __init__(self, message: str, shard: str = "", video_id: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.shard, self.video_id, self.index = shard, video_id, index


class DeviceError(ActrecError):
    """A requested device is not available (e.g. --gpu without CUDA)."""

    exit_code = 2


class OutputError(ActrecError):
    """An output that cannot be written (a full disk, a folder gone or read-only); the message names the path,
    says why, and what was kept."""
