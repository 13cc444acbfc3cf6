"""Least privilege (issue 6): started as root with run_as, the daemon captures as an unprivileged
user; the supervisor keeps CAP_NET_RAW only, workers keep nothing, and a restarted worker still
reopens its capture. Live capture on loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start as root and drop")

CAP_NET_RAW = 1 << 13


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return {"uid": int(out["Uid"][0]), "eff": int(out["CapEff"][0], 16), "prm": int(out["CapPrm"][0], 16)}


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def echo(port: int) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="PRIV_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PRIV_SCP")
    assert assoc.is_established
    assoc.send_c_echo()
    assoc.release()


def test_run_as_drops_privileges_and_restarts_still_capture(tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    dicom_port, http_port = free_port(), free_port()
    scp = AE(ae_title="PRIV_SCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", dicom_port), block=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"ports: [{dicom_port}]\ncapture: {{interfaces: [lo]}}\nworkers: 2\n"
                   "run_as: {user: nobody, group: nogroup}\nevent_log: {destination: none}\n")
    probe = subprocess.Popen([sys.executable, "-m", "probe", "run", "--config", str(cfg), "--listen",
                              f"127.0.0.1:{http_port}"], stderr=subprocess.PIPE, text=True)
    try:
        assert wait(lambda: get(http_port, "/healthz")[0] == 200 if _up(http_port) else False), "not healthy"
        parent = status(probe.pid)
        assert parent["uid"] == 65534 and parent["eff"] == CAP_NET_RAW and parent["prm"] == CAP_NET_RAW
        workers = children(probe.pid)
        assert len(workers) == 2
        for w in workers:
            st = status(w)
            assert st["uid"] == 65534 and st["eff"] == 0 and st["prm"] == 0

        echo(dicom_port)
        assert wait(lambda: b'command="C-ECHO"' in get(http_port, "/metrics")[1])

        os.kill(workers[0], signal.SIGKILL)
        assert wait(lambda: json.loads(get(http_port, "/healthz")[1]).get("restarts") == 1
                    and get(http_port, "/healthz")[0] == 200)
        for w in children(probe.pid):
            st = status(w)
            assert st["uid"] == 65534 and st["eff"] == 0
        for _ in range(3):
            echo(dicom_port)

        def echoes():
            for line in get(http_port, "/metrics")[1].decode().splitlines():
                if line.startswith("dicom_dimse_requests_total{") and 'command="C-ECHO"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0

        assert wait(lambda: echoes() == 4), echoes()  # counted across the restart, by either worker
    finally:
        probe.send_signal(signal.SIGTERM)
        assert probe.wait(15) == 0, probe.stderr.read()
        server.shutdown()


def _up(port: int) -> bool:
    try:
        get(port, "/healthz")
        return True
    except OSError:
        return False
