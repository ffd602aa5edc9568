"""The embedded log's write-ahead file: one file per database, owned by one process (an exclusive lock).

Blocking calls: the embedded log runs them in its worker thread, next to the insert. `append` returns
once the batch is fsync'd; `mark_done` writes without fsync (a lost marker costs an idempotent replay).
`rotate` replaces the file, atomically, by one holding only a checkpoint (where offsets continue); it is
called when no batch is pending, so nothing it drops was still needed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import structlog

from common.errors import Unavailable
from ingest.sink.rows import RangeId
from ingest.sink.wal_codec import (
    WalBatch,
    WalState,
    decode_record,
    encode_batch,
    encode_checkpoint,
    encode_done,
    unframe,
    wal_state,
)

log = structlog.get_logger(__name__)

ROTATE_BYTES = 64 * 1024 * 1024


class FileWal:
    def __init__(self, path: Path, *, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = path
        self._rotate_bytes = rotate_bytes
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._size = 0

    def open(self) -> WalState:
        """Take the lock and read the file: the pending batches (replay them, then `rotate`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise Unavailable(f"the embedded write-ahead file {self.path} is in use by another process") from exc
        self._lock_fd = lock_fd
        try:
            buf = self.path.read_bytes()
        except FileNotFoundError:
            buf = b""
        payloads, intact = unframe(buf)
        if intact < len(buf):
            # A torn append: its insert never started (the insert waits for the fsync'd append).
            log.warning("embedded_wal_torn_tail", path=str(self.path), dropped_bytes=len(buf) - intact)
        state = wal_state([decode_record(p) for p in payloads])
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.ftruncate(self._fd, intact)  # later appends must follow the intact prefix, not the torn bytes
        self._size = intact
        return state

    def _write(self, data: bytes, *, sync: bool) -> None:
        assert self._fd is not None, "open the write-ahead file first"
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)
        if sync:
            os.fdatasync(self._fd)

    def append(self, batch: WalBatch) -> None:
        """Durably write a batch ahead of its insert."""
        self._write(encode_batch(batch), sync=True)

    def mark_done(self, range_id: RangeId) -> None:
        self._write(encode_done(range_id), sync=False)

    @property
    def wants_rotation(self) -> bool:
        return self._size >= self._rotate_bytes

    def rotate(self, next_offset: int) -> None:
        """Replace the file by a checkpoint. Only when no batch in it is pending."""
        assert self._fd is not None, "open the write-ahead file first"
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = encode_checkpoint(next_offset)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock file releases the lock
        self._fd = self._lock_fd = None
