"""The sd_notify protocol against real AF_UNIX datagram sockets standing in for systemd."""

import os
import socket
import uuid

import pytest

from probe.sdnotify import Notifier


def _receiver(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2)
    return s


@pytest.fixture
def path_socket(tmp_path):
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    s = _receiver(path)
    yield path, s
    s.close()


@pytest.fixture
def abstract_socket():
    name = f"dicom-probe-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    s = _receiver(b"\0" + name.encode())
    yield "@" + name, s
    s.close()


def test_payloads_over_a_path_socket(path_socket):
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready() is True
    assert rx.recv(4096) == b"READY=1"
    n.ready("capturing on eth0, 4 workers")
    assert rx.recv(4096) == b"READY=1\nSTATUS=capturing on eth0, 4 workers"
    n.status("1234 associations")
    assert rx.recv(4096) == b"STATUS=1234 associations"
    n.watchdog()
    assert rx.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert rx.recv(4096) == b"STOPPING=1"
    assert n.errors == 0
    n.close()


def test_payloads_over_an_abstract_socket(abstract_socket):
    address, rx = abstract_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    n.ready("up")
    n.watchdog()
    assert rx.recv(4096) == b"READY=1\nSTATUS=up"
    assert rx.recv(4096) == b"WATCHDOG=1"
    assert n.errors == 0
    n.close()


def test_status_cannot_inject_assignments(path_socket):
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    n.status("AE CT_1\nSTOPPING=1\r\nMAINPID=1")
    assert rx.recv(4096) == b"STATUS=AE CT_1 STOPPING=1 MAINPID=1"
    n.ready("a\nb")
    assert rx.recv(4096) == b"READY=1\nSTATUS=a b"
    n.close()


def test_status_is_utf8(path_socket):
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    n.status("Zürich PACS")
    assert rx.recv(4096) == "STATUS=Zürich PACS".encode()
    n.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}])
def test_without_notify_socket_everything_is_a_no_op(environ):
    n = Notifier.from_env(environ)
    assert not n.enabled
    assert [n.ready("x"), n.status("y"), n.watchdog(), n.stopping()] == [False] * 4
    assert n.errors == 0
    assert n._sock is None  # not even a socket was made
    n.close()


def test_from_env_defaults_to_os_environ(monkeypatch, path_socket):
    address, rx = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier.from_env()
    n.watchdog()
    assert rx.recv(4096) == b"WATCHDOG=1"
    assert n.watchdog_interval() == 2.0
    n.close()


def test_send_errors_are_counted_not_raised(tmp_path):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.errors == 2
    assert str(tmp_path / "nobody-listens") in n.last_error
    n.close()


def test_send_error_when_receiver_went_away(path_socket):
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.watchdog() is True
    rx.close()  # systemd restarted, or the socket file is stale
    assert n.watchdog() is False
    assert n.errors == 1
    n.close()


def test_unsupported_address_is_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert n.ready() is False
    assert n.errors == 1 and "unsupported" in n.last_error
    assert os.listdir(tmp_path) == []  # a relative name is never used as a path


@pytest.mark.parametrize("environ,expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1"}, 0.0000005),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "30s"}, None),
    ({"WATCHDOG_USEC": " 30"}, None),
    ({"WATCHDOG_USEC": "3_0"}, None),
    ({"WATCHDOG_USEC": "١٢"}, None),  # Arabic-Indic digits: isdigit() but not a systemd number
    ({"WATCHDOG_PID": str(os.getpid())}, None),
    ({}, None),
])
def test_watchdog_interval(environ, expected):
    assert Notifier.from_env(environ).watchdog_interval() == expected


def test_watchdog_interval_with_notify_socket(path_socket):
    address, _ = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval() == 15.0
