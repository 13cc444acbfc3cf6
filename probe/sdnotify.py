"""systemd's service notification protocol (sd_notify(3)), without libsystemd or a Python binding.

With ``Type=notify`` systemd waits for ``READY=1`` before it considers the probe started, and with
``WatchdogSec=`` it restarts a probe that stops sending ``WATCHDOG=1`` — the guard against a capture
loop that hangs while the process stays alive. The protocol is one datagram of ``KEY=value`` lines
sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; that is all this module does.

Outside systemd (no ``$NOTIFY_SOCKET``: a terminal, a container, the tests) every call is a no-op,
so callers never need to check. Send errors never propagate — a daemon must not die because its
supervisor is busy — but they are counted in ``errors`` (and ``last_error``) for the health endpoint.
With ``NotifyAccess=main`` only the main process may notify: call this from the parent, not from
capture workers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# A send blocks only if systemd's receive queue is full; a lost ping is better than a stuck loop,
# and the watchdog interval leaves room for the next one.
SEND_TIMEOUT = 1.0


def _one_line(text: str) -> str:
    # A newline in a STATUS= value would start a new assignment (e.g. "STOPPING=1") in the datagram.
    return " ".join(str(text).splitlines())


def _decimal(value: str | int | None) -> int | None:
    """A non-negative decimal integer, else None (int() would also take " 1", "1_0" and "+1")."""
    text = str(value) if value is not None else ""
    return int(text) if text.isascii() and text.isdigit() else None


class Notifier:
    """Sends notifications to ``address`` (a socket path, or ``@name`` for the abstract namespace).

    ``address=None`` disables notifications. ``watchdog_usec``/``watchdog_pid`` are
    ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` as systemd sets them (strings or ints, or None).
    """

    def __init__(self, address: str | None = None, watchdog_usec: str | int | None = None,
                 watchdog_pid: str | int | None = None):
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self.errors = 0
        self.last_error: str | None = None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for the environment systemd gave this process."""
        return cls(environ.get("NOTIFY_SOCKET"), environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _sockaddr(self) -> str | bytes | None:
        a = self.address
        if a.startswith("@"):
            return b"\0" + a[1:].encode()  # Linux abstract namespace: leading NUL, no file
        if a.startswith("/"):
            return a
        return None  # e.g. systemd 256's "vsock:" addresses: not supported here

    def notify(self, payload: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it was sent. No-op when disabled."""
        if self.address is None:
            return False
        addr = self._sockaddr()
        if addr is None:
            self._failed(f"unsupported NOTIFY_SOCKET address {self.address!r}")
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(payload.encode("utf-8"), addr)
            return True
        except OSError as e:
            self._failed(f"notify {self.address}: {e.strerror or e}")
            return False

    def _failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def ready(self, status: str = "") -> bool:
        """Startup is complete: systemd starts units ordered after this one."""
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """Free-form status line shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive ping; send one every :meth:`watchdog_interval` seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun (systemd then expects the process to exit, not a crash)."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings — half of ``WatchdogSec=``, as sd_watchdog_enabled(3)
        recommends — or None when the watchdog is off, malformed, or meant for another process."""
        usec = _decimal(self.watchdog_usec)
        if not usec:
            return None
        if self.watchdog_pid not in (None, "") and _decimal(self.watchdog_pid) != os.getpid():
            return None  # set for another process (e.g. inherited from the watched parent)
        return usec / 2 / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
