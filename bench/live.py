#!/usr/bin/env python3
"""dicom-probe live-capture benchmark (issue "Performance": the live and memory targets).

    python3 bench/live.py [--capture F | --frames N] [--pps 100000] [--seconds 60] [--workers 1]
                          [--buffer-mib 64] [--pps-multi K] [--json OUT] [--keep]
    python3 bench/live.py --soak [--seconds 600] [--pps 20000] [...the same options]

What it measures
----------------
Live: the benchmark's deterministic capture (bench/make_capture.py; by default the cached
1,000,000-frame one, generated when missing, with its FILE.truth.json) is replayed with tcpreplay
at --pps frames/s onto a veth pair inside a private network namespace (``dbl-live-<pid>``; MTU 1500,
offloads off; nothing is sent outside it), where ``dicom-probe run`` captures the other end with
--workers workers. L = ceil(seconds x pps / frames in the file) whole loops are sent with
``--unique-ip``, so every loop's connections are new ones (tcpreplay shifts both IPv4 addresses of
every frame of loop k by k-1, in opposite directions, both directions of a connection alike), and
the probe's counts must equal L x the truth. The shift can move one pair of hosts onto another
pair's addresses: before the replay the script repeats tcpreplay's edits on the capture's SYNs
and reports the connections that reuse an earlier loop's 4-tuple, and how long after that
connection's last frame they start (the probe takes a SYN on a closed 4-tuple as a new
connection; one that overlapped would be a real collision and is reported as such). After tcpreplay ends and the probe has drained (its
dicom_probe_packets_total unchanged for 2 s), /metrics is scraped and compared with run.py's
check: per (calling, called) AE pair the A-ASSOCIATE-RQs, accepts, rejects by
result/source/reason, releases, aborts by sender/source/reason/phase, DIMSE requests, responses
by status class and unanswered requests; the DICOM frames and bytes after the BPF filter; and
zero stream gaps, resyncs, PDU/DIMSE errors, protocol violations, no-response and
closed-without-release associations.

Soak (--soak): the same set-up and replay (whole loops at --pps covering --seconds; the 1M capture
at 20,000 pps is 50 s a loop, so 600 s is 12 loops); VmRSS of the supervisor and of each worker
(/proc/PID/status) every 5 s. The target: "RSS flat over a 10-minute soak of repeated captures".

How to read the output
----------------------
sender:   the rate tcpreplay asked for and achieved ("Rated: ... pps", over its sending time), the
          frames it sent ("Actual:") and its failures. With --unique-ip tcpreplay cannot edit
          non-IP frames (the capture's ARP noise): on loops 2..L it skips them and counts them as
          "Failed write attempts"; they never pass the probe's filter, so they change no count.
veth:     the frames that reached the receiving end, and the veth's own drop counters.
probe:    frames expected after the BPF filter (L x the truth's DICOM frames), frames the probe
          received (dicom_probe_packets_total), kernel drops (dicom_probe_kernel_drops_total =
          libpcap ps_drop: the capture ring was full) in absolute and as % of the frames that
          reached the filter, interface drops (ps_ifdrop), and any frames lost elsewhere
          (expected - received - kernel drops). "counts exact" is yes only when every value
          checked equals L x the truth; otherwise the totals per kind are shown with their
          differences, then the first differing series.
CPU:      utime+stime (/proc/PID/stat) of the worker(s), the supervisor and tcpreplay from the
          first frame sent until the probe had drained, in CPU-seconds and in cores on average;
          the machine's busy CPU over the same time (/proc/stat) and what other processes used.
          The machine has 2 cores: tcpreplay itself needs most of one at high rates.
memory:   peak RSS (VmHWM) of the worker(s) and the supervisor (a worker's RSS includes its capture
          ring, buffer_mib, resident from the start); with --soak the VmRSS samples at
          10, 20, 50 and 100 % of the replay (1, 2, 5 and 10 minutes for 600 s), the maximum, the
          growth from the 20 % mark to the end (MiB and %), and the verdict: "flat" when the growth
          over the second half (50 % mark to end) is under 5 % and under 10 MiB, for the total and
          for every process; else "growing".
verdict:  live: MET only with the asked rate achieved (within 1 %), every frame sent and
          received, 0 kernel and interface drops and exact counts; else NOT MET with the reasons.

--json OUT writes every figure (and the samples). Work files (config, logs, tcpreplay output) go
to a temporary directory, kept with --keep. The namespace, the probe and tcpreplay are removed on
exit, on errors and on Ctrl-C; namespaces named dbl-<role>-<pid> left by a run whose process is
gone are deleted first. Needs root, iproute2, ethtool, curl, tcpreplay and tcpdump. Exit status 0
when the live target is met (--soak: the memory is flat and the counts exact), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import make_capture  # noqa: E402
import netlab as N  # noqa: E402
import run as bench_run  # noqa: E402  (bench/run.py: check_counts, prom_counts, machine)

NS_PREFIX = "dbl-"  # every namespace this benchmark creates starts with this; no other is touched
TX_DEV, RX_DEV = "dbl-tx", "dbl-rx"  # both ends inside our namespace
TCPREPLAY = shutil.which("tcpreplay") or "/usr/bin/tcpreplay"
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
STDBUF = shutil.which("stdbuf")
HZ = os.sysconf("SC_CLK_TCK")
DRAIN_STABLE = 2.0  # s: dicom_probe_packets_total unchanged this long = drained
DRAIN_TIMEOUT = 90.0
SCRAPE_EVERY = 5.0  # s: /metrics during the replay (progress, lag, drops)
SOAK_MARKS = (0.1, 0.2, 0.5, 1.0)  # of the replay: 1, 2, 5, 10 minutes of a 600 s soak
FLAT_PCT, FLAT_MIB = 5.0, 10.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# The namespace (tests/netlab.py's Lab, with our own prefix).


class BenchLab(N.Lab):
    def netns(self, role: str) -> str:
        reap_stale()
        name = f"{NS_PREFIX}{role}-{os.getpid()}"
        N.sh([N.IP, "netns", "add", name])
        self.namespaces.append(name)
        for key in ("all", "default"):
            self.ex(name, ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        self.ex(name, [N.IP, "link", "set", "lo", "up"])
        return name

    @staticmethod
    def _delete(ns: str) -> None:
        assert ns.startswith(NS_PREFIX)
        r = N.sh([N.IP, "netns", "pids", ns], check=False)
        for pid in r.stdout.split():  # only what we started in our namespace is in it
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        N.sh([N.IP, "netns", "del", ns], check=False)


def reap_stale() -> None:
    """Delete dbl-<role>-<pid> namespaces whose creating process is gone (an interrupted run)."""
    for line in N.sh([N.IP, "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        role, _, pid = name[len(NS_PREFIX):].rpartition("-")
        if name.startswith(NS_PREFIX) and role and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            log(f"deleting stale namespace {name}")
            BenchLab._delete(name)


def link_stats(lab: BenchLab, ns: str, dev: str) -> dict:
    out = json.loads(lab.ex(ns, [N.IP, "-j", "-s", "link", "show", "dev", dev]).stdout)[0]["stats64"]
    return {"rx_packets": out["rx"]["packets"], "rx_dropped": out["rx"]["dropped"],
            "tx_packets": out["tx"]["packets"], "tx_dropped": out["tx"]["dropped"]}


def softnet_dropped() -> int:
    """Frames dropped by the kernel's per-CPU input backlogs (host-wide, all namespaces)."""
    try:
        return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())
    except (OSError, IndexError, ValueError):
        return 0


# ------------------------------------------------------------------------------------------------
# /proc figures.


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return None


def status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def machine_busy() -> float:
    return bench_run._cpu_busy()


def mib(kib) -> float | None:
    return None if kib is None else kib / 1024


# ------------------------------------------------------------------------------------------------
# The capture and its truth.


def locate_capture(args) -> tuple[Path, dict | None]:
    if args.capture:
        f = Path(args.capture).resolve()
        if not f.exists():
            raise SystemExit(f"{f}: no such file")
        tp = f.with_name(f.name + ".truth.json")
        return f, (json.loads(tp.read_text()) if tp.exists() else None)
    f = make_capture.default_path(args.frames)
    tp = f.with_name(f.name + ".truth.json")
    if f.exists() and tp.exists():
        return f, json.loads(tp.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"dicom-{args.frames}-s{make_capture.DEFAULT_SEED}-*.pcap*"):
        stale.unlink()  # another generator version, as bench/run.py does
    log(f"generating {args.frames:,} frames -> {f.relative_to(REPO)} (cached for later runs)")
    return f, make_capture.generate(args.frames, f, make_capture.DEFAULT_SEED)


def count_frames(path: Path, bpf: str | None = None) -> int | None:
    """Frames of ``path`` (matching ``bpf``), counted by tcpdump (for files scan_capture cannot read)."""
    cmd = [TCPDUMP, "-nn", "-q", "-r", str(path)] + ([bpf] if bpf else [])
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.count(b"\n") if r.returncode == 0 else None


def scan_capture(path: Path) -> dict | None:
    """One pass over a classic Ethernet pcap: frames, non-IP frames (what --unique-ip cannot edit),
    and every IPv4 TCP connection's SYN (frame index, 4-tuple) and last frame index. None for other
    formats (pcapng, other link types)."""
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            return None
        if gh[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            e = "<"
        elif gh[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            e = ">"
        else:
            return None
        if struct.unpack(e + "I", gh[20:24])[0] & 0xFFFF != 1:  # DLT_EN10MB
            return None
        rec = struct.Struct(e + "IIII").unpack
        read = f.read
        n = non_ip = 0
        syns: list[tuple] = []  # (index, src, sport, dst, dport)
        last: dict = {}  # canonical 4-tuple -> last frame index
        while True:
            h = read(16)
            if len(h) < 16:
                break
            incl = rec(h)[2]
            d = read(incl)
            i = n
            n += 1
            et, off = d[12:14], 14
            while et in (b"\x81\x00", b"\x88\xa8") and len(d) >= off + 4:
                et, off = d[off + 2:off + 4], off + 4
            if et == b"\x86\xdd":
                continue
            if et != b"\x08\x00":
                non_ip += 1
                continue
            if len(d) < off + 20 or d[off + 9] != 6:
                continue
            t = off + (d[off] & 0x0F) * 4
            if len(d) < t + 14:
                continue
            src = int.from_bytes(d[off + 12:off + 16], "big")
            dst = int.from_bytes(d[off + 16:off + 20], "big")
            sport = int.from_bytes(d[t:t + 2], "big")
            dport = int.from_bytes(d[t + 2:t + 4], "big")
            a, b = (src, sport), (dst, dport)
            last[(a, b) if a < b else (b, a)] = i
            if d[t + 13] & 0x12 == 0x02:  # SYN without ACK
                syns.append((i, src, sport, dst, dport))
    return {"frames": n, "non_ip": non_ip, "syns": syns, "last": last}


_M32 = 0xFFFFFFFF


def unique_ip_edit(src: int, dst: int, it: int) -> tuple[int, int]:
    """tcpreplay 4.4.3's fast_edit_packet() on a preloaded (cached) frame: each loop after the first
    edits the cached frame once more, moving the two addresses one step apart (their sum, and so
    the checksums, unchanged); ``it`` is the loop number - 1."""
    so, do = src, dst
    if ((dst - it) & _M32) > ((src - 1 - it) & _M32):
        src, dst = (src - 1) & _M32, (dst + 1) & _M32
        if src > so and dst > do:
            src = (src - 1) & _M32
        elif dst < do and src < so:
            dst = (dst + 1) & _M32
    else:
        src, dst = (src + 1) & _M32, (dst - 1) & _M32
        if dst > do and src > so:
            dst = (dst - 1) & _M32
        elif src < so and dst < do:
            src = (src + 1) & _M32
    return src, dst


def unique_ip_reuse(scan: dict, loops: int, pps: float) -> dict:
    """Connections of the L loops whose 4-tuple an earlier connection already used. --unique-ip
    shifts the addresses of loop k by k-1 steps, so a client and server whose addresses sum to the
    same value as another pair's, on the same ports, meet that pair's 4-tuple a few loops later.
    With --pps the frames leave at a constant rate, so frame j of loop k leaves at
    (k * frames + j) / pps: the gap from the earlier connection's last frame to the later SYN."""
    frames = scan["frames"]
    cur = [(i, s, sp, d, dp) for i, s, sp, d, dp in scan["syns"]]
    seen: dict = {}
    reused, min_gap, overlapping = 0, None, 0
    for k in range(loops):
        if k:
            nxt = []
            for i, s, sp, d, dp in cur:
                s2, d2 = unique_ip_edit(s, d, k)
                nxt.append((i, s2, sp, d2, dp))
            cur = nxt
        for (i, s, sp, d, dp), orig in zip(cur, scan["syns"]):
            key = (s, sp, d, dp)
            if key in seen:
                k1, end1 = seen[key]
                gap = ((k - k1) * frames + i - end1) / pps
                reused += 1
                overlapping += gap <= 0
                min_gap = gap if min_gap is None else min(min_gap, gap)
            a, b = (orig[1], orig[2]), (orig[3], orig[4])
            seen[key] = (k, scan["last"].get((a, b) if a < b else (b, a), i))
    return {"connections": len(scan["syns"]) * loops, "reused_4tuples": reused,
            "min_gap_after_close_seconds": None if min_gap is None else round(min_gap, 2),
            "overlapping": overlapping}


INT_FIELDS = ("requests", "accepts", "releases")
DICT_FIELDS = ("rejects", "aborts", "dimse_requests", "dimse_responses", "dimse_unanswered")


def scale_truth(truth: dict, k: int) -> dict:
    pairs = {}
    for key, p in truth["pairs"].items():
        q = dict(p)
        for f in INT_FIELDS:
            q[f] = p[f] * k
        for f in DICT_FIELDS:
            q[f] = {a: b * k for a, b in p[f].items()}
        pairs[key] = q
    return {**truth, "pairs": pairs, "dicom_frames": truth["dicom_frames"] * k,
            "dicom_bytes": truth["dicom_bytes"] * k}


def aggregate(pairs: dict) -> dict:
    """Totals over all pairs, per kind (what the table shows)."""
    out = Counter()
    for p in pairs.values():
        for f in INT_FIELDS:
            out[f] += p[f]
        for f in DICT_FIELDS:
            out[f] += sum(p[f].values())
    return dict(out)


# ------------------------------------------------------------------------------------------------
# The probe.


class Probe:
    def __init__(self, lab: BenchLab, ns: str, work: Path, workers: int, buffer_mib: int, ports: list[int],
                 drop_pure_acks: bool = False):
        import yaml

        self.lab, self.ns, self.work, self.workers = lab, ns, work, workers
        self.port = N.free_port()
        self.config = work / "probe.yaml"
        self.config.write_text(yaml.safe_dump({
            "ports": list(ports),
            "tls_ports": [],  # the capture has no DICOM over TLS: the filter is the DICOM ports alone
            "capture": {"interfaces": [RX_DEV], "buffer_mib": buffer_mib, "promiscuous": True,
                        "drop_pure_acks": drop_pure_acks},
            "workers": workers,
            "http": {"listen": f"127.0.0.1:{self.port}"},
            "event_log": {"destination": "none"},
        }))
        self.stderr = work / "probe.err"
        exe = shutil.which("dicom-probe")
        self.cmd = ([exe] if exe else [sys.executable, "-m", "probe"]) + ["run", "--config", str(self.config)]
        self.proc = None
        self.seen_workers: list[int] = []
        self.cmdline = b""

    def start(self) -> None:
        self.proc = self.lab.spawn(self.ns, self.cmd, stdout=self.work / "probe.out", stderr=self.stderr, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.stderr.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        kids = N.children(self.pid)
        if not self.cmdline:
            self.cmdline = _cmdline(self.pid)
        for k in kids:
            if k not in self.seen_workers:
                self.seen_workers.append(k)
        return kids

    def health(self) -> tuple[int, dict]:
        status, body = N.http_get(self.ns, self.port, "/healthz")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"body": body[:200]}

    def scrape(self) -> tuple[dict, str]:
        status, body = N.http_get(self.ns, self.port, "/metrics", timeout=20)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:300]}\n{self.log_tail()}")
        return N.parse_metrics(body), body

    def wait_ready(self, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        status, h = 0, {}
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the probe exited with {self.proc.returncode}:\n{self.log_tail()}")
            status, h = self.health()
            if status == 200 and h.get("workers_alive") == self.workers \
                    and h.get("capture_handles_open", 0) >= self.workers:
                self.worker_pids()
                return h
            time.sleep(0.2)
        raise RuntimeError(f"the probe was not ready in {timeout:.0f} s: /healthz {status} {h}\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM; its exit status (None when it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
        finally:
            for pid in self.seen_workers:  # workers that outlived it: by PID, when still the probe's fork
                if self.cmdline and _cmdline(pid) == self.cmdline:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def probe_figures(samples: dict) -> dict:
    v = N.value
    lags = {dict(lab).get("worker"): val for lab, val in N.select(samples, "dicom_probe_worker_lag_seconds").items()}
    return {"packets": int(v(samples, "dicom_probe_packets_total")),
            "bytes": int(v(samples, "dicom_probe_bytes_total")),
            "kernel_drops": int(v(samples, "dicom_probe_kernel_drops_total")),
            "interface_drops": int(v(samples, "dicom_probe_interface_drops_total")),
            "restarts": int(v(samples, "dicom_probe_worker_restarts_total")),
            "workers_alive": int(v(samples, "dicom_probe_workers_alive")),
            "flows_active": int(v(samples, "dicom_probe_flows_active")),
            "associations_active": int(v(samples, "dicom_associations_active")),
            "lag": max(lags.values()) if lags else None,
            "last_packet_age": v(samples, "dicom_probe_last_packet_age_seconds")}


# ------------------------------------------------------------------------------------------------
# tcpreplay.


def parse_tcpreplay(text: str) -> dict:
    """The final summary (after "Test complete" when present, else the last of each line)."""
    tail = text[text.rfind("Test complete"):] if "Test complete" in text else text
    out: dict = {}
    m = re.findall(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds", tail)
    if m:
        out["packets"], out["bytes"], out["seconds"] = int(m[-1][0]), int(m[-1][1]), float(m[-1][2])
    m = re.findall(r"Rated: ([\d.]+) Bps, ([\d.]+) Mbps, ([\d.]+) pps", tail)
    if m:
        out["Bps"], out["mbps"], out["pps"] = float(m[-1][0]), float(m[-1][1]), float(m[-1][2])
    for key, pat in (("failed_attempts", r"Failed write attempts: (\d+)"), ("successful", r"Successful packets:\s+(\d+)"),
                     ("failed", r"Failed packets:\s+(\d+)"), ("truncated", r"Truncated packets:\s+(\d+)"),
                     ("retried_enobufs", r"Retried packets \(ENOBUFS\):\s+(\d+)"),
                     ("retried_eagain", r"Retried packets \(EAGAIN\):\s+(\d+)")):
        m = re.findall(pat, tail)
        if m:
            out[key] = int(m[-1])
    m = re.search(r"Flows: (\d+) flows", tail)
    if m:
        out["flows"] = int(m.group(1))
    out["warnings"] = sorted({ln.strip() for ln in text.splitlines()
                              if re.search(r"(?i)warning|unable|error|fatal", ln)})[:10]
    return out


# ------------------------------------------------------------------------------------------------
# One run.


def run(args) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, AF_PACKET capture)")
    for tool in (TCPREPLAY, N.ETHTOOL, N.CURL, TCPDUMP):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} not found")
    capture, truth = locate_capture(args)
    t = time.monotonic()
    scan = scan_capture(capture)
    if scan is not None:
        frames, non_ip = scan["frames"], scan["non_ip"]
        if truth and truth["frames"] != frames:
            raise SystemExit(f"{capture}: {frames} frames, its truth says {truth['frames']}")
    else:  # pcapng or another link type: tcpdump counts, no --unique-ip analysis
        frames = count_frames(capture)
        non_ip = count_frames(capture, "not (ip or ip6 or (vlan and (ip or ip6)))")
    if not frames:
        raise SystemExit(f"{capture}: no frames")
    ports = truth.get("server_ports", [104, 11112]) if truth else [104, 11112]
    loops = max(1, math.ceil(args.seconds * args.pps / frames))
    reuse = unique_ip_reuse(scan, loops, args.pps) if scan is not None else None
    scan_s = time.monotonic() - t
    expect_sent = loops * frames - (loops - 1) * (non_ip or 0)
    if args.drop_pure_acks:  # what the probe's filter passes, counted by tcpdump with the same filter
        from probe.capture import build_filter

        n = count_frames(capture, build_filter(ports, drop_pure_acks=True))
        expect_filtered = None if n is None else loops * n
    elif truth:
        expect_filtered = loops * truth["dicom_frames"]
    else:  # what the probe's filter passes, counted by tcpdump
        ports_expr = " or ".join(f"port {p}" for p in ports)
        n = count_frames(capture, f"(tcp and ({ports_expr})) or (vlan and tcp and ({ports_expr}))")
        expect_filtered = None if n is None else loops * n
    res: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "soak" if args.soak else "live",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": bench_run.machine(),
        "capture": {"path": str(capture.relative_to(REPO) if capture.is_relative_to(REPO) else capture),
                    "frames": frames, "non_ip_frames": non_ip,
                    "dicom_frames": truth["dicom_frames"] if truth else None,
                    "associations": truth["associations"] if truth else None,
                    "pairs": len(truth["pairs"]) if truth else None, "truth": truth is not None,
                    "ports": ports},
        "loops": loops, "expected_sent": expect_sent, "expected_after_filter": expect_filtered,
        "unique_ip": reuse,
    }
    log(f"capture: {res['capture']['path']}: {frames:,} frames"
        + (f", {truth['dicom_frames']:,} DICOM, {truth['associations']:,} associations, {len(truth['pairs'])} AE pairs"
           if truth else " (no .truth.json next to it: counts are not checked)")
        + (f"; {non_ip} non-IP" if non_ip is not None else ""))
    log(f"plan: {loops} loop(s) x {frames:,} frames at {args.pps:,} frames/s = {loops * frames / args.pps:.1f} s "
        f"(asked {args.seconds} s), --unique-ip, {args.workers} worker(s), buffer {args.buffer_mib} MiB")
    if loops * frames / args.pps > 1.5 * args.seconds:
        log(f"  (whole loops only, so that the counts can be checked: one loop of this capture takes "
            f"{frames / args.pps:.0f} s at this rate; a smaller capture, e.g. --frames 20000, gives shorter runs)")
    if reuse is not None:
        log(f"--unique-ip (simulated, {scan_s:.1f} s): {reuse_text(reuse)}")

    work = Path(tempfile.mkdtemp(prefix="live-", dir=CACHE if CACHE.exists() else None))
    res["work_dir"] = str(work)
    lab = BenchLab()
    probe = None
    try:
        ns = lab.netns("live")
        lab.veth(ns, TX_DEV, ns, RX_DEV)
        probe = Probe(lab, ns, work, args.workers, args.buffer_mib, ports, args.drop_pure_acks)
        t_start = time.monotonic()
        probe.start()
        h = probe.wait_ready()
        log(f"probe ready in {time.monotonic() - t_start:.1f} s: supervisor {probe.pid}, workers "
            f"{probe.worker_pids()}; /healthz {json.dumps(h)}")
        base_samples, _ = probe.scrape()
        res["probe_before"] = probe_figures(base_samples)
        res.update(replay_and_measure(args, lab, ns, probe, capture, loops, work, res))
        # the counts, after the drain
        samples, text = probe.scrape()
        (work / "metrics.prom").write_text(text)
        pf = probe_figures(samples)
        res["probe"] = pf
        if truth:
            want = scale_truth(truth, loops)
            chk = bench_run.check_counts(want, text, frames_filtered=args.drop_pure_acks)
            got = bench_run.prom_counts(text)
            res["check"] = {"ok": chk["ok"], "values_checked": chk["values_checked"], "pairs": chk["pairs"],
                            "problems": chk["problems"], "totals_probe": chk["totals"],
                            "expected": aggregate(want["pairs"]), "probe": aggregate(got["pairs"]),
                            "pairs_probe": len([p for p in got["pairs"].values() if p["requests"]])}
        res["probe_exit"] = probe.stop()
        res["probe_log_tail"] = probe.log_tail(5)
    finally:
        if replay_proc[0] is not None and replay_proc[0].poll() is None:
            N.Lab.stop(replay_proc[0], signal.SIGINT, timeout=3)
        if probe is not None:
            try:
                probe.stop()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        lab.cleanup()
        if args.keep:
            log(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


replay_proc: list = [None]  # the tcpreplay Popen, for the cleanup


def replay_and_measure(args, lab, ns, probe: Probe, capture: Path, loops: int, work: Path, res: dict) -> dict:
    out: dict = {}
    tx0, rx0 = link_stats(lab, ns, TX_DEV), link_stats(lab, ns, RX_DEV)
    softnet0 = softnet_dropped()
    cmd = ([STDBUF, "-oL", "-eL"] if STDBUF else []) + [
        TCPREPLAY, "-i", TX_DEV, f"--pps={args.pps}", f"--loop={loops}", "--unique-ip", "--preload-pcap",
        f"--stats={max(1, int(SCRAPE_EVERY * 2))}"]
    if args.pps_multi > 1:
        cmd.append(f"--pps-multi={args.pps_multi}")
    cmd.append(str(capture))
    out["tcpreplay_cmd"] = " ".join(["tcpreplay"] + cmd[cmd.index(TCPREPLAY) + 1:])
    tr_log = work / "tcpreplay.out"
    log(f"$ ip netns exec {ns} {out['tcpreplay_cmd']}")
    p = lab.spawn(ns, cmd, stdout=tr_log, stderr=tr_log)
    replay_proc[0] = p
    # Wait for the preload to finish: "Test start" (line-buffered through stdbuf).
    t_spawn = time.monotonic()
    while p.poll() is None and "Test start" not in tr_log.read_text(errors="replace"):
        time.sleep(0.05)
    t0 = time.monotonic()
    out["preload_seconds"] = round(t0 - t_spawn, 2)
    busy0 = machine_busy()
    workers = probe.worker_pids()
    cpu0 = {pid: cpu_seconds(pid) for pid in workers + [probe.pid]}
    tr_cpu0 = cpu_seconds(p.pid) or 0.0
    rss: list[dict] = []  # {"t", "supervisor", "workers": {pid: kib}}
    progress: list[dict] = []
    sample_every = 5.0 if args.soak else 1.0
    next_sample, next_scrape = t0, t0 + SCRAPE_EVERY
    max_lag = 0.0
    tr_rusage = None
    while True:
        pid_done, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid_done:
            tr_rusage = ru
            p.returncode = os.waitstatus_to_exitcode(st)
            break
        now = time.monotonic()
        if now >= next_sample:
            workers = probe.worker_pids()
            for pid in workers:
                cpu0.setdefault(pid, cpu_seconds(pid))
            rss.append({"t": round(now - t0, 1), "supervisor": status_kib(probe.pid, "VmRSS"),
                        "workers": {str(pid): status_kib(pid, "VmRSS") for pid in workers}})
            next_sample += sample_every
        if now >= next_scrape:
            try:
                pf = probe_figures(probe.scrape()[0])
            except RuntimeError as e:
                pf = {"error": str(e)[:200]}
            pf["t"] = round(now - t0, 1)
            progress.append(pf)
            if pf.get("lag") is not None:
                max_lag = max(max_lag, pf["lag"])
            if "packets" in pf:
                w = rss[-1] if rss else {"workers": {}}
                log(f"  t={pf['t']:6.1f} s  probe frames {pf['packets']:>12,}  kernel drops {pf['kernel_drops']:>10,}"
                    f"  lag {pf['lag'] if pf['lag'] is not None else float('nan'):6.2f} s  flows {pf['flows_active']:>6,}"
                    f"  RSS sup {mib(w.get('supervisor')) or 0:5.0f} MiB workers "
                    + " ".join(f"{mib(k) or 0:.0f}" for k in w["workers"].values()) + " MiB")
            else:
                log(f"  t={pf['t']:6.1f} s  scrape failed: {pf['error']}")
            next_scrape += SCRAPE_EVERY
        if probe.proc.poll() is not None:
            raise RuntimeError(f"the probe exited with {probe.proc.returncode} during the replay:\n{probe.log_tail()}")
        time.sleep(0.1)
    t_sent = time.monotonic()
    text = tr_log.read_text(errors="replace")
    tr = parse_tcpreplay(text)
    tr["exit_status"] = p.returncode
    if tr_rusage is not None:
        tr["cpu_seconds"] = round(tr_rusage.ru_utime + tr_rusage.ru_stime - tr_cpu0, 2)
        tr["maxrss_mib"] = round(tr_rusage.ru_maxrss / 1024, 1)
    out["tcpreplay"] = tr
    out["tcpreplay_tail"] = "\n".join(text.splitlines()[-14:])
    log(f"tcpreplay done in {t_sent - t0:.1f} s (exit {p.returncode}): "
        f"{tr.get('packets', 0):,} frames, {tr.get('pps', 0):,.0f} pps; draining the probe ...")
    if p.returncode != 0:
        log(text[-2000:])

    # Drain: dicom_probe_packets_total unchanged for DRAIN_STABLE seconds.
    last, since, drained = None, time.monotonic(), False
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        pf = probe_figures(probe.scrape()[0])
        key = (pf["packets"], pf["kernel_drops"])
        if key != last:
            last, since = key, time.monotonic()
        elif time.monotonic() - since >= DRAIN_STABLE:
            drained = True
            break
        time.sleep(0.5)
    t_end = time.monotonic()
    out["drained"] = drained
    out["drain_seconds"] = round(t_end - t_sent, 1)
    busy = machine_busy() - busy0
    workers = probe.worker_pids()
    cpu = {}
    for pid in set(workers) | {probe.pid}:
        c = cpu_seconds(pid)
        if c is not None and cpu0.get(pid) is not None:
            cpu[pid] = c - cpu0[pid]
    wall = t_end - t0
    send_s = tr.get("seconds") or (t_sent - t0)
    worker_cpu = sum(v for k, v in cpu.items() if k != probe.pid)
    sup_cpu = cpu.get(probe.pid, 0.0)
    out["cpu"] = {"window_seconds": round(wall, 2), "send_seconds": send_s,
                  "workers_cpu_seconds": round(worker_cpu, 2), "supervisor_cpu_seconds": round(sup_cpu, 2),
                  "workers_cores": round(worker_cpu / wall, 3), "supervisor_cores": round(sup_cpu / wall, 3),
                  "per_worker_cpu_seconds": {str(k): round(v, 2) for k, v in cpu.items() if k != probe.pid},
                  "tcpreplay_cpu_seconds": tr.get("cpu_seconds"),
                  "machine_busy_cores": round(busy / wall, 3),
                  "other_cores": round(max(0.0, busy - worker_cpu - sup_cpu - (tr.get("cpu_seconds") or 0)) / wall, 3),
                  "cpus": os.cpu_count()}
    out["memory"] = {"supervisor_peak_mib": mib(status_kib(probe.pid, "VmHWM")),
                     "workers_peak_mib": {str(pid): mib(status_kib(pid, "VmHWM")) for pid in workers},
                     "supervisor_rss_mib": mib(status_kib(probe.pid, "VmRSS")),
                     "workers_rss_mib": {str(pid): mib(status_kib(pid, "VmRSS")) for pid in workers}}
    out["workers_seen"] = list(probe.seen_workers)
    tx1, rx1 = link_stats(lab, ns, TX_DEV), link_stats(lab, ns, RX_DEV)
    out["veth"] = {"tx_packets": tx1["tx_packets"] - tx0["tx_packets"], "tx_dropped": tx1["tx_dropped"] - tx0["tx_dropped"],
                   "rx_packets": rx1["rx_packets"] - rx0["rx_packets"], "rx_dropped": rx1["rx_dropped"] - rx0["rx_dropped"]}
    out["softnet_dropped_host"] = softnet_dropped() - softnet0
    out["max_lag_seconds"] = max_lag
    out["progress"] = progress
    out["rss_samples"] = rss
    out["replay_seconds"] = round(t_sent - t0, 2)
    return out


# ------------------------------------------------------------------------------------------------
# Reporting.


def reuse_text(r: dict) -> str:
    if not r["reused_4tuples"]:
        return f"all {r['connections']:,} TCP connections of the loops have distinct 4-tuples"
    return (f"{r['reused_4tuples']:,} of {r['connections']:,} TCP connections reuse the 4-tuple of a connection of an "
            f"earlier loop (addresses shifted into another pair's); the nearest SYN comes "
            f"{r['min_gap_after_close_seconds']:.2f} s after that connection's last frame"
            + (f"; {r['overlapping']} overlap it in time" if r["overlapping"] else
               " (the probe takes a SYN on a closed 4-tuple as a new connection)"))


def fmt(n) -> str:
    return "n/a" if n is None else f"{n:,}"


def soak_analysis(res: dict) -> dict:
    samples = [s for s in res["rss_samples"] if s["supervisor"] is not None]
    if len(samples) < 3:
        return {"verdict": "too short", "note": "fewer than 3 samples"}
    end_t = samples[-1]["t"]
    series: dict[str, list[tuple[float, float]]] = {"supervisor": [(s["t"], s["supervisor"] / 1024) for s in samples]}
    wids = []
    for s in samples:
        for pid in s["workers"]:
            if pid not in wids:
                wids.append(pid)
    for i, pid in enumerate(wids):
        series[f"worker {i} (pid {pid})"] = [(s["t"], s["workers"][pid] / 1024) for s in samples
                                             if s["workers"].get(pid) is not None]
    series["total"] = [(s["t"], (s["supervisor"] + sum(v or 0 for v in s["workers"].values())) / 1024)
                       for s in samples]

    def at(pts, frac):
        target = frac * end_t
        return min(pts, key=lambda tv: abs(tv[0] - target)) if pts else (None, None)

    out = {"end_t": end_t, "marks": [], "series": {}}
    for frac in SOAK_MARKS:
        t, _ = at(series["total"], frac)
        out["marks"].append({"fraction": frac, "t": t})
    flat_all = True
    for name, pts in series.items():
        if not pts:
            continue
        v20, v50, vend = at(pts, 0.2)[1], at(pts, 0.5)[1], pts[-1][1]
        g = vend - v20
        h = vend - v50
        flat = h < FLAT_MIB and (h / v50 * 100 if v50 else 0) < FLAT_PCT
        flat_all &= flat
        out["series"][name] = {"at_marks": [round(at(pts, f)[1], 1) for f in SOAK_MARKS],
                               "max": round(max(v for _, v in pts), 1),
                               "growth_20_end_mib": round(g, 1),
                               "growth_20_end_pct": round(g / v20 * 100, 1) if v20 else None,
                               "growth_second_half_mib": round(h, 1),
                               "growth_second_half_pct": round(h / v50 * 100, 1) if v50 else None,
                               "flat": flat}
    out["verdict"] = "flat" if flat_all else "growing"
    return out


def report(res: dict) -> tuple[str, bool]:
    a = res["args"]
    tr = res["tcpreplay"]
    pf = res["probe"]
    cpu, mem, veth = res["cpu"], res["memory"], res["veth"]
    L = res["loops"]
    lines = []
    add = lines.append
    add("")
    add(f"== dicom-probe {'soak' if res['mode'] == 'soak' else 'live capture'}: {L} x {res['capture']['path']} "
        f"({res['capture']['frames']:,} frames) at {a['pps']:,} frames/s, {a['workers']} worker(s), "
        f"buffer {a['buffer_mib']} MiB{', capture.drop_pure_acks' if a.get('drop_pure_acks') else ''} ==")
    add(f"  machine: {res['machine'].get('cpu')}, {res['machine'].get('logical_cpus')} CPUs, kernel "
        f"{res['machine'].get('kernel')}, libpcap {res['machine'].get('libpcap')}, git {res['machine'].get('git')}")
    add("sender (tcpreplay 4.4.3, --unique-ip --preload-pcap)")
    asked = a["pps"]
    got_pps = tr.get("pps")
    add(f"  rate asked / achieved            {asked:,} / {got_pps:,.0f} frames/s ({tr.get('mbps', 0):,.1f} Mbit/s) "
        f"over {tr.get('seconds', 0):.2f} s" if got_pps is not None else "  rate: tcpreplay printed no 'Rated:' line")
    add(f"  frames sent                      {fmt(tr.get('packets'))} of {res['expected_sent']:,} expected "
        f"({L} x {res['capture']['frames']:,}"
        + (f" - {L - 1} x {res['capture']['non_ip_frames']} non-IP" if res['capture']['non_ip_frames'] and L > 1 else "")
        + ")")
    fa = tr.get("failed_attempts")
    skipped = (L - 1) * (res["capture"]["non_ip_frames"] or 0)
    add(f"  tcpreplay failures               {fmt(fa)} 'failed write attempts'"
        + (f" (= the {skipped:,} non-IP frames --unique-ip skips on loop{'s 2..' if L > 2 else ' '}{L})"
           if fa == skipped and fa else "")
        + f"; device: {fmt(tr.get('failed'))} failed, {fmt(tr.get('truncated'))} truncated, "
        f"{fmt(tr.get('retried_enobufs'))} ENOBUFS / {fmt(tr.get('retried_eagain'))} EAGAIN retries")
    if res.get("unique_ip") is not None:
        add(f"  --unique-ip                      {reuse_text(res['unique_ip'])}")
    add("receiving veth")
    add(f"  frames arrived                   {veth['rx_packets']:,} (sender tx {veth['tx_packets']:,}); "
        f"veth drops tx {veth['tx_dropped']:,} rx {veth['rx_dropped']:,}; host backlog drops "
        f"{res['softnet_dropped_host']:,} (all namespaces)")
    add("probe")
    exp = res["expected_after_filter"]
    rec, kd, ifd = pf["packets"], pf["kernel_drops"], pf["interface_drops"]
    add(f"  frames expected after the filter {fmt(exp)}"
        + (f" ({L} x {exp // L:,}{'' if res['capture']['truth'] else ', counted by tcpdump'})" if exp else ""))
    add(f"  frames received                  {rec:,}" + (f" ({rec / exp * 100:.3f} %)" if exp else ""))
    seen = rec + kd
    add(f"  kernel drops (pcap ps_drop)      {kd:,} ({kd / seen * 100 if seen else 0:.3f} % of {seen:,} that passed the filter)")
    add(f"  interface drops (ps_ifdrop)      {ifd:,}")
    lost = exp - rec - kd if exp is not None else None
    add(f"  frames lost elsewhere            {fmt(lost)} (expected - received - kernel drops)")
    add(f"  drained                          {'yes' if res['drained'] else 'NO'} ({res['drain_seconds']} s after "
        f"tcpreplay ended); worker lag max {res['max_lag_seconds']:.2f} s during the replay (sampled every "
        f"{SCRAPE_EVERY:.0f} s), {pf['lag'] if pf['lag'] is not None else float('nan'):.2f} s at the end; "
        f"restarts {pf['restarts']}")
    chk = res.get("check")
    if chk is None:
        add("  counts exact                     not checked (no truth for this capture)")
    else:
        add(f"  counts exact                     {'yes' if chk['ok'] else 'NO'} ({chk['values_checked']:,} values over "
            f"{chk['pairs']} AE pairs vs {L} x the truth; {len(chk['problems'])} difference(s))")
        if not chk["ok"]:
            add(f"    {'':24} {'expected':>12} {'probe':>12} {'difference':>12}")
            for k in INT_FIELDS + DICT_FIELDS:
                e, g = chk["expected"].get(k, 0), chk["probe"].get(k, 0)
                add(f"    {k:24} {e:12,} {g:12,} {g - e:+12,}")
            t = chk["totals_probe"]
            add("    probe error counters: " + ", ".join(
                f"{n.replace('dicom_probe_', '').replace('dicom_association_', '')} {int(t.get(n, 0)):,}"
                for n in ("dicom_probe_stream_gaps_total", "dicom_probe_resyncs_total", "dicom_probe_pdu_errors_total",
                          "dicom_probe_protocol_violations_total", "dicom_probe_dimse_errors_total",
                          "dicom_association_no_response_total", "dicom_association_closed_without_release_total")))
            for pr in chk["problems"][:8]:
                add(f"    - {pr[:160]}")
            if len(chk["problems"]) > 8:
                add(f"    - ... {len(chk['problems']) - 8} more (--json has them all)")
    add("CPU (from the first frame sent until drained, "
        f"{cpu['window_seconds']:.1f} s; {cpu['cpus']} CPUs in the machine)")
    add(f"  worker(s)                        {cpu['workers_cpu_seconds']:.1f} CPU-s = {cpu['workers_cores']:.2f} cores"
        + (f" ({', '.join(f'{v:.1f}' for v in cpu['per_worker_cpu_seconds'].values())} per worker)"
           if len(cpu['per_worker_cpu_seconds']) > 1 else ""))
    add(f"  supervisor                       {cpu['supervisor_cpu_seconds']:.1f} CPU-s = {cpu['supervisor_cores']:.2f} cores")
    if cpu["tcpreplay_cpu_seconds"] is not None:
        add(f"  tcpreplay                        {cpu['tcpreplay_cpu_seconds']:.1f} CPU-s = "
            f"{cpu['tcpreplay_cpu_seconds'] / cpu['window_seconds']:.2f} cores")
    add(f"  machine busy / other processes   {cpu['machine_busy_cores']:.2f} / {cpu['other_cores']:.2f} cores")
    add("memory")
    add("  peak RSS (VmHWM)                 worker(s) "
        + ", ".join(f"{v:.0f} MiB" for v in mem["workers_peak_mib"].values() if v is not None)
        + f"; supervisor {mem['supervisor_peak_mib'] or 0:.0f} MiB")
    ok = True
    reasons = []
    if res["mode"] == "soak":
        sa = res["soak"]
        if "series" in sa:
            labels = []
            for m in sa["marks"]:
                t = m["t"]
                labels.append(f"{t / 60:.0f} min" if abs(sa["end_t"] - 600) < 30 and t >= 60 else f"t={t:.0f}s")
            add(f"  RSS over the soak (MiB, sampled every 5 s; marks at 10/20/50/100 % of {sa['end_t']:.0f} s)")
            add(f"    {'':26}" + "".join(f"{lab:>9}" for lab in labels)
                + f"{'max':>8} {'20%->end':>16} {'2nd half':>16}  verdict")
            for name, s in sa["series"].items():
                g = f"{s['growth_20_end_mib']:+.1f} ({s['growth_20_end_pct'] or 0:+.1f}%)"
                h = f"{s['growth_second_half_mib']:+.1f} ({s['growth_second_half_pct'] or 0:+.1f}%)"
                add(f"    {name:26}" + "".join(f"{v:9.1f}" for v in s["at_marks"])
                    + f"{s['max']:8.1f} {g:>16} {h:>16}  {'flat' if s['flat'] else 'growing'}")
        if sa.get("end_t", 0) < 60:
            add("  note: a replay shorter than 60 s is too short to judge: closed connections are kept 30 s "
                "(flows.closed_linger), so the flow table is still filling up")
        add(f"verdict (memory): {sa['verdict'].upper()} (flat = second-half growth under {FLAT_PCT:.0f} % "
            f"and under {FLAT_MIB:.0f} MiB, for every process and the total)")
        add(f"drops during the soak: {kd:,} kernel, {ifd:,} interface, {fmt(lost)} elsewhere; counts "
            + ("not checked" if chk is None else "exact" if chk["ok"] else f"NOT exact ({len(chk['problems'])} differences)"))
        ok = sa["verdict"] == "flat" and (chk is None or chk["ok"])
    else:
        if got_pps is None or got_pps < asked * 0.99:
            reasons.append(f"rate {got_pps or 0:,.0f} < {asked:,} frames/s asked")
        if tr.get("packets") != res["expected_sent"]:
            reasons.append(f"{fmt(tr.get('packets'))} frames sent of {res['expected_sent']:,}")
        if kd:
            reasons.append(f"{kd:,} kernel drops ({kd / seen * 100:.2f} %)")
        if ifd:
            reasons.append(f"{ifd:,} interface drops")
        if lost:
            reasons.append(f"{lost:,} frames lost before the capture")
        if chk is None:
            reasons.append("counts not checked")
        elif not chk["ok"]:
            reasons.append(f"counts differ ({len(chk['problems'])} differences)")
        if not res["drained"]:
            reasons.append("the probe had not drained")
        ok = not reasons
        add(f"verdict: target \"0 kernel drops and exact counts at {asked:,} frames/s for {a['seconds']} s with "
            f"{a['workers']} worker(s)\": " + ("MET" if ok else "NOT MET: " + "; ".join(reasons)))
    if res.get("probe_exit") not in (0, None):
        add(f"note: the probe exited with status {res['probe_exit']} on SIGTERM")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--capture", help="capture to replay (its FILE.truth.json, when present, gives the expected counts)")
    ap.add_argument("--frames", type=int, default=make_capture.DEFAULT_FRAMES,
                    help="without --capture: the generator's capture of this many frames (default 1,000,000; "
                         "generated and cached in bench/.cache/ when missing)")
    ap.add_argument("--soak", action="store_true", help="memory soak: RSS sampled every 5 s")
    ap.add_argument("--pps", type=int, help="frames/s (default 100,000; --soak 20,000)")
    ap.add_argument("--seconds", type=float, help="replay time, rounded up to whole loops (default 60; --soak 600)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--buffer-mib", type=int, default=64, help="capture.buffer_mib (default 64)")
    ap.add_argument("--pps-multi", type=int, default=1, help="tcpreplay --pps-multi (frames per timing step)")
    ap.add_argument("--drop-pure-acks", action="store_true",
                    help="capture.drop_pure_acks: the kernel filter drops ACK-only segments (frames expected: tcpdump "
                         "with the same filter; counts checked without the frame totals)")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, last scrape)")
    args = ap.parse_args(argv)
    if args.pps is None:
        args.pps = 20000 if args.soak else 100000
    if args.seconds is None:
        args.seconds = 600.0 if args.soak else 60.0
    if args.pps <= 0 or args.seconds <= 0 or args.workers < 1 or args.buffer_mib < 1:
        ap.error("--pps, --seconds, --workers and --buffer-mib must be positive")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        res = run(args)
    except KeyboardInterrupt:
        log("\ninterrupted: everything was torn down")
        return 130
    if args.soak:
        res["soak"] = soak_analysis(res)
    text, ok = report(res)
    res["ok"] = ok
    res["report"] = text
    log(text)
    log("\ntcpreplay's summary:\n" + res["tcpreplay_tail"])
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
        log(f"\nfigures written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
