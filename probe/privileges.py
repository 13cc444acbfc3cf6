"""Least privilege: run capture as an unprivileged user that keeps only what it needs.

- Under systemd the unit starts the daemon as its own user with ``AmbientCapabilities=CAP_NET_RAW``.
- Started as root with ``run_as`` configured, the supervisor, once the workers have opened their
  capture handles and the HTTP port is bound, becomes that user and keeps CAP_NET_RAW alone (to let
  a restarted worker reopen its capture handles).
- Every worker drops all capabilities as soon as its capture handles are open: the code that parses
  untrusted packets runs with none.

Linux only; capabilities are set through libc's ``prctl``/``capset`` (ctypes, no dependency).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd

CAP_NET_RAW = 13
_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(Exception):
    pass


def _capset(effective: int, permitted: int) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    data[0].effective, data[0].permitted = effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF
    data[1].effective, data[1].permitted = effective >> 32, permitted >> 32
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")


def capabilities() -> dict[str, int]:
    """The current effective, permitted and ambient capability sets (from /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("CapEff:", "CapPrm:", "CapAmb:")):
                key, value = line.split(":")
                out[key] = int(value, 16)
    return out


def resolve(user: str, group: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"run_as.user: no such user {user!r}") from None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"run_as.group: no such group {group!r}") from None
    else:
        gid = pw.pw_gid
    return pw.pw_uid, gid


def become(user: str, group: str = "") -> None:
    """As root: switch to ``user``/``group`` keeping CAP_NET_RAW only (effective and permitted)."""
    if os.geteuid() != 0:
        raise PrivilegeError("run_as needs the daemon to be started as root")
    uid, gid = resolve(user, group)
    if _libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_KEEPCAPS): {os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    keep = 1 << CAP_NET_RAW
    _capset(keep, keep)


def drop_all(user: str = "", group: str = "") -> None:
    """A worker whose capture handles are open gives up every capability. As root it becomes
    ``user`` (setuid without keep-caps clears them all); as root without ``user`` the operator chose
    not to drop, and it stays as it is."""
    if os.geteuid() == 0:
        if not user:
            return
        uid, gid = resolve(user, group)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if capabilities().get("CapPrm", 0):
        _capset(0, 0)
