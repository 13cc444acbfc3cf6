"""capture.drop_pure_acks: segments carrying only an ACK filtered out by BPF, counts unchanged.

The frames the filter drops are checked against tshark (an independent reading of the same files),
and the results with and without it are compared on every committed capture, also when the capture
lost segments (the probe then learns of a hole from the other side's data instead of its ACKs).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from capture_edit import read, write
from probe.capture import NO_PURE_ACKS, build_filter
from probe.config import ConfigError, load
from probe.offline import analyze_files

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
TRUTHS = sorted(CAPTURES.glob("*.truth.json"))
HEALTH = ("dicom_probe_packets_total", "dicom_probe_bytes_total")


def _config(tmp_path: Path, drop: bool, extra: str = ""):
    path = tmp_path / f"drop-{drop}.yaml"
    path.write_text(f"capture:\n  drop_pure_acks: {str(drop).lower()}\n{extra}")
    return load(str(path))


def _pcap_of(truth_path: Path) -> tuple[Path, list[int]]:
    truth = json.loads(truth_path.read_text())
    name = truth.get("capture_file", truth_path.name.replace(".truth.json", ".pcap"))
    return CAPTURES / name, truth["server_ports"]


def _values(store) -> dict:
    return {name: series for name, series in store.values.items() if name not in HEALTH}


def _tshark_pure_acks(pcap: Path, ports: list[int]) -> int:
    port = " or ".join(f"tcp.port == {p}" for p in ports)
    flt = f"({port}) and tcp.len == 0 and tcp.flags.syn == 0 and tcp.flags.fin == 0 and tcp.flags.reset == 0"
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", flt, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_same_counts_without_pure_acks_and_tshark_agrees_on_what_was_dropped(tmp_path, truth_path):
    pcap, ports = _pcap_of(truth_path)
    full = analyze_files([str(pcap)], ports, _config(tmp_path, False))
    lean = analyze_files([str(pcap)], ports, _config(tmp_path, True))
    assert _values(lean.store) == _values(full.store)
    assert full.packets - lean.packets == _tshark_pure_acks(pcap, ports)


def test_the_filter_drops_a_real_share_of_a_bulk_store():
    pcap = CAPTURES / "store_dcmtk_veth.pcap"
    assert _tshark_pure_acks(pcap, [104]) >= 30  # storescp's ACKs of the C-STORE data


@pytest.mark.parametrize("rate,seed", [(0.0, 0), (0.01, 1), (0.05, 2), (0.20, 4)])
def test_segments_lost_by_the_capture_give_the_same_counts(tmp_path, rate, seed):
    frames, lt = read(CAPTURES / "store_dcmtk_veth.pcap")
    client = next(f.src for f in frames if f.tcp is not None and f.tcp.dport == 104)
    bulk = [i for i, f in enumerate(frames) if f.src == client and len(f.payload) == 1448][10:-2]
    rng = random.Random(seed)
    drop = {i for i in bulk if rng.random() < rate} if rate else {bulk[40]}
    damaged = write(tmp_path / "lossy.pcap", [f for i, f in enumerate(frames) if i not in drop], lt)
    full = analyze_files([str(damaged)], [104], _config(tmp_path, False))
    lean = analyze_files([str(damaged)], [104], _config(tmp_path, True))
    assert full.store.get("dicom_probe_stream_gaps_total") >= 1
    assert _values(lean.store) == _values(full.store)


def test_the_clause_sits_inside_every_vlan_branch():
    bpf = build_filter([104], "net 198.18.0.0/15", drop_pure_acks=True)
    assert bpf.count(NO_PURE_ACKS) == 3  # untagged, one tag, two tags
    assert NO_PURE_ACKS not in build_filter([104], drop_pure_acks=False)
    assert build_filter([104], vlan=False, drop_pure_acks=True).count(NO_PURE_ACKS) == 1


def _analyze(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "probe", "analyze", "-q", "--format", "prom", *args],
                          capture_output=True, text=True, check=True).stdout


def _packets(prom: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in prom.splitlines()
               if line.startswith("dicom_probe_packets_total{"))


def test_cli_flag_config_key_and_workers_agree(tmp_path):
    pcap = str(CAPTURES / "vlan_dcmtk.pcap")  # 58 frames, 24 of them pure ACKs, 2 bypass the port filter
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("capture:\n  drop_pure_acks: true\n")
    flag = _analyze("--drop-pure-acks", pcap)
    assert _packets(_analyze(pcap)) == 56 and _packets(flag) == 32
    assert _analyze("--config", str(cfg), pcap) == flag
    assert _analyze("--workers", "2", "--drop-pure-acks", pcap) == flag


def test_analyze_applies_the_configured_filter_with_one_worker_as_with_several(tmp_path):
    pcap = str(CAPTURES / "reject_calling_pynetdicom.pcap")
    cfg = tmp_path / "probe.yaml"
    cfg.write_text('capture:\n  filter: "tcp port 1"\n')  # matches none of the capture's frames
    for workers in ("1", "2"):
        out = _analyze("--config", str(cfg), "--workers", workers, pcap)
        assert _packets(out) == 0 and "dicom_association_requests_total{" not in out


def test_config_key_is_a_boolean(tmp_path):
    assert _config(tmp_path, True).filter_options["drop_pure_acks"] is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("capture:\n  drop_pure_acks: often\n")
    with pytest.raises(ConfigError, match="capture.drop_pure_acks"):
        load(str(bad))
