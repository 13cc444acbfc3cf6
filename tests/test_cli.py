"""`dicom-probe analyze` end to end: the three formats, several files, and bad captures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from prometheus_client.parser import text_string_to_metric_families

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
REJECTS = CAPTURES / "reject_calling_pynetdicom.pcap"  # 5 rejects (1/1/3) for 2 titles, 1 released echo
ECHO = CAPTURES / "echo_dcmtk_loopback.pcap"  # 3 released echoes, port 11112


def analyze(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "probe", "analyze", *map(str, args)], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_table_shows_worst_pair_first_with_reason():
    p = analyze(REJECTS)
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["CALLING", "AE", "CALLED"]
    first = lines[1].split()
    assert first[:5] == ["UNKNOWN_CALLER1", "REJ_CALLING_SCP", "3", "0", "3"]
    assert "calling-ae-title-not-recognized" in lines[1]
    assert any(l.split()[:5] == ["KNOWN_CALLER", "REJ_CALLING_SCP", "1", "1", "0"] for l in lines)
    assert any(l.startswith("Probe health:") for l in lines)
    assert p.stderr == ""  # no progress on a pipe


def test_json_lines_one_object_per_association():
    p = analyze(REJECTS, "--format", "json")
    recs = [json.loads(l) for l in p.stdout.splitlines()]
    assert len(recs) == 6
    rejected = [r for r in recs if r["outcome"] == "rejected"]
    assert len(rejected) == 5
    for r in rejected:
        assert r["reject"] == {"result": "rejected-permanent", "source": "service-user",
                               "reason": "calling-ae-title-not-recognized"}
        assert r["server"].endswith(":11112") and r["rq_seen"] is True
        assert 0 <= r["setup_seconds"] < 5 and r["start"] > 1.6e9
    (ok,) = [r for r in recs if r["outcome"] == "released"]
    assert ok["accepted_contexts"] and ok["accepted_contexts"][0]["abstract_syntax"] == "1.2.840.10008.1.1"


def test_prom_is_a_valid_exposition_with_the_same_counts():
    p = analyze(REJECTS, "--format", "prom")
    fams = {f.name: f for f in text_string_to_metric_families(p.stdout)}
    rejects = fams["dicom_association_rejects"].samples
    by_caller = {s.labels["calling_ae"]: s.value for s in rejects}
    assert by_caller == {"UNKNOWN_CALLER1": 3, "UNKNOWN_CALLER2": 2}
    assert {s.labels["reason"] for s in rejects} == {"calling-ae-title-not-recognized"}
    assert fams["dicom_probe_build_info"].samples[0].labels["version"]


def test_several_files_are_one_capture(tmp_path):
    both = analyze(ECHO, REJECTS, "--format", "prom").stdout
    fams = {f.name: f for f in text_string_to_metric_families(both)}
    pairs = {(s.labels["calling_ae"], s.value) for s in fams["dicom_association_requests"].samples}
    assert ("ECHO_LO_SCU", 3) in pairs and ("UNKNOWN_CALLER1", 3) in pairs


def test_port_option_adds_a_port(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ports: [104]\n")
    none = analyze(ECHO, "--config", cfg, "--format", "prom").stdout
    assert 'dicom_association_requests_total{' not in none  # 11112 filtered out
    some = analyze(ECHO, "--config", cfg, "--port", "11112", "--format", "prom").stdout
    assert 'dicom_association_requests_total{called_ae="ECHO_LO_SCP",calling_ae="ECHO_LO_SCU",site="other"} 3.0' in some


def _one_line_error(p, *words):
    assert p.returncode != 0
    err = p.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err


def test_missing_file(tmp_path):
    _one_line_error(analyze(tmp_path / "nope.pcap", check=False), "nope.pcap", "cannot read")


def test_not_a_capture(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("this is not a capture file\n" * 3)
    _one_line_error(analyze(f, check=False), "not a pcap or pcapng")
    d = tmp_path / "dir"
    d.mkdir()
    _one_line_error(analyze(d, check=False), "dir")
    e = tmp_path / "empty.pcap"
    e.write_bytes(b"")
    _one_line_error(analyze(e, check=False), "empty.pcap")


def test_truncated_capture_reports_what_was_read(tmp_path):
    data = REJECTS.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # ends inside a packet record
    p = analyze(cut, "--format", "prom", check=False)
    assert p.returncode == 1
    _one_line_error(p, "cut.pcap", "truncated")
    fams = {f.name: f for f in text_string_to_metric_families(p.stdout)}
    assert sum(s.value for s in fams["dicom_association_requests"].samples) >= 3


def test_bad_config_and_port(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prots: [104]\n")
    p = analyze(ECHO, "--config", cfg, check=False)
    assert p.returncode == 2 and "prots: unknown key (did you mean 'ports'?)" in p.stderr
    p = analyze(ECHO, "--port", "0", check=False)
    assert p.returncode == 2 and "--port 0" in p.stderr


def test_unsupported_link_type_is_counted_not_fatal(tmp_path):
    f = tmp_path / "wifi.pcap"
    with open(f, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=105)
        w.writepkt(b"\x00" * 64, ts=1.0)
    p = analyze(f, "--format", "prom", check=False)
    assert p.returncode == 0
    assert "link type 105 not supported" in p.stderr


def test_pcapng_is_read(tmp_path):
    ng = list(CAPTURES.glob("*.pcapng"))
    if not ng:
        pytest.skip("no pcapng fixture recorded")
    p = analyze(ng[0], "--format", "json")
    assert p.stdout.strip()


def test_progress_on_a_terminal_only(tmp_path):
    import os
    import pty

    master, slave = pty.openpty()
    p = subprocess.run([sys.executable, "-m", "probe", "analyze", str(REJECTS)], stdout=subprocess.PIPE,
                       stderr=slave, text=True)
    os.close(slave)
    seen = os.read(master, 4096).decode()
    os.close(master)
    assert p.returncode == 0
    assert "frames" in seen and "associations" in seen and "100%" in seen
    quiet_master, quiet_slave = pty.openpty()
    subprocess.run([sys.executable, "-m", "probe", "analyze", "--quiet", str(REJECTS)], stdout=subprocess.PIPE,
                   stderr=quiet_slave)
    os.close(quiet_slave)
    os.set_blocking(quiet_master, False)
    try:
        written = os.read(quiet_master, 4096)
    except OSError:  # EAGAIN/EIO: nothing was written before the slave closed
        written = b""
    os.close(quiet_master)
    assert written == b""


def test_html_report_is_self_contained_and_names_the_failing_pair():
    p = analyze(REJECTS, "--format", "html")
    html = p.stdout
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "UNKNOWN_CALLER1" in html and "calling-ae-title-not-recognized" in html
    assert "http://" not in html and "https://" not in html
