"""bench/storm.py's reject-storm capture: valid frames, and the probe counts every association."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import storm  # noqa: E402


def test_storm_capture_is_counted_exactly_and_tshark_sees_the_same_pdus(tmp_path):
    n = 400
    capture = storm.build(tmp_path / "storm.pcap", n, 5000)
    one = storm.measure(capture, n, repeat=1)
    two = storm.measure(capture, n, repeat=1, extra=["--workers", "2"])
    assert one["exact"] and two["exact"] and one["frames"] == 10 * n
    pdus = subprocess.run(["tshark", "-r", str(capture), "-d", "tcp.port==11112,dicom", "-T", "fields",
                           "-e", "dicom.pdu.type"], capture_output=True, text=True, check=True).stdout.split()
    assert pdus.count("0x01") == n and pdus.count("0x03") == n  # A-ASSOCIATE-RQ, A-ASSOCIATE-RJ
    bad = subprocess.run(["tshark", "-r", str(capture), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                          "-Y", "tcp.checksum.status == 2 or ip.checksum.status == 2"],
                         capture_output=True, text=True, check=True).stdout
    assert bad == ""
