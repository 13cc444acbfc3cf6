"""The association event log: one JSON object per line, to stdout, a rotated file, or nowhere.

JSON Lines because every log shipper and ``jq`` reads it, and a line is a record. That only holds if
no record can contain a line break: records carry AE titles and other peer-supplied text, so they are
serialised with ``ensure_ascii=True`` — control characters, U+2028/U+2029 and every non-ASCII
character become ``\\uXXXX`` escapes and each line is plain ASCII — and ``allow_nan=False``, because
``NaN`` is not JSON and would break strict readers.

Destinations:

- ``"stdout"``: for journald (systemd captures stdout); flushed after each batch.
- ``"none"``: records are discarded.
- anything else is a file path (``./stdout`` for a file of that name), opened for append. When a line
  would take the file past ``max_bytes`` the file is rotated first: ``path.N-1`` → ``path.N`` … ``path``
  → ``path.1``, keeping ``backups`` old files (the oldest is overwritten); with ``backups=0`` the file
  is simply started afresh. A single line longer than ``max_bytes`` still goes, alone, into a new file.
  The directory is never created: a missing one is a configuration mistake, reported at open.

:meth:`EventLog.reopen` is for SIGHUP after an external logrotate moved the file away. Call it (like
:meth:`EventLog.write`) from the main loop, not from inside a signal handler: it closes the file
that a write may be using.
"""

from __future__ import annotations

import errno
import json
import os
import sys

STDOUT = "stdout"
NONE = "none"


def encode(record: dict) -> bytes:
    """One record as one ASCII line, newline included."""
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


class EventLog:
    """Writes batches of association records as JSON Lines; see the module docstring.

    ``written`` counts records written (not those sent to ``"none"``), ``rotations`` file rotations.
    """

    def __init__(self, destination: str, max_bytes: int, backups: int):
        if not isinstance(destination, str) or not destination:
            raise ValueError(f"event log destination must be 'stdout', 'none' or a file path, not {destination!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"event log max_bytes must be a positive integer, not {max_bytes!r}")
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 0:
            raise ValueError(f"event log backups must be an integer >= 0, not {backups!r}")
        self.destination = destination
        self.max_bytes = max_bytes
        self.backups = backups
        self.written = 0
        self.rotations = 0
        self.closed = False
        self._fd: int | None = None
        if self.path is not None:
            self._open_file()

    @classmethod
    def open(cls, destination: str, max_bytes: int, backups: int) -> EventLog:
        """Open ``destination``; raises OSError (naming the path) if the file cannot be opened."""
        return cls(destination, max_bytes, backups)

    @property
    def path(self) -> str | None:
        """The file written, or None for stdout and none."""
        return None if self.destination in (STDOUT, NONE) else self.destination

    def _open_file(self) -> None:
        path = self.destination
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            err = FileNotFoundError(f"event log {path}: directory {directory} does not exist (it is not created)")
            err.errno = errno.ENOENT
            raise err
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            err = type(e)(f"cannot open event log {path}: {e.strerror or e}")
            err.errno = e.errno
            raise err from e

    def write(self, records: list[dict]) -> None:
        """Append ``records``, one line each. Every record is serialised before anything is written,
        so a record that is not JSON-serialisable (TypeError/ValueError) writes none of the batch."""
        if self.closed:
            raise ValueError("event log is closed")
        if self.destination == NONE or not records:
            return
        lines = [encode(r) for r in records]
        if self.destination == STDOUT:
            out = sys.stdout  # looked up each time: the daemon or a test may have replaced it
            out.write(b"".join(lines).decode("ascii"))
            out.flush()
            self.written += len(lines)
            return
        if self._fd is None:  # a failed rotation or reopen left no file open: try again
            self._open_file()
        # The file's real size, not a running count: an external "copytruncate" may have emptied it.
        size = os.fstat(self._fd).st_size
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            if size + chunk_size + len(line) > self.max_bytes and size + chunk_size > 0:
                self._write_all(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
                size = 0
            chunk.append(line)
            chunk_size += len(line)
        self._write_all(chunk)

    def _write_all(self, chunk: list[bytes]) -> None:
        data = memoryview(b"".join(chunk))
        while data:
            n = os.write(self._fd, data)
            data = data[n:]
        self.written += len(chunk)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = None
        path = self.destination
        if self.backups == 0:
            os.unlink(path)
        else:
            for i in range(self.backups - 1, 0, -1):
                if os.path.exists(f"{path}.{i}"):
                    os.replace(f"{path}.{i}", f"{path}.{i + 1}")
            os.replace(path, f"{path}.1")
        self.rotations += 1
        self._open_file()

    def reopen(self) -> None:
        """Close and reopen the file (creating it if it was moved away). No-op for stdout and none."""
        if self.closed:
            raise ValueError("event log is closed")
        if self.path is None:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_file()

    def close(self) -> None:
        """Close the file (stdout is left open: it is not ours). Idempotent."""
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
