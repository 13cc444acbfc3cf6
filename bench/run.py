#!/usr/bin/env python3
"""dicom-probe throughput benchmark (issue "Performance", part 1).

    python3 bench/run.py [--frames N] [--workers N] [--repeat R] [--keep] [--write]

1. Generates a realistic DICOM capture with bench/make_capture.py (default 1,000,000 frames; cached
   in bench/.cache/ by its parameters, together with its FILE.truth.json).
2. Measures, per whole process, wall time and peak RSS (/usr/bin/time -v when present, else
   getrusage(RUSAGE_CHILDREN); plus the peak summed RSS of the process tree, sampled from /proc):
     tcpdump -r F -w /dev/null                          the floor: libpcap reading the file
     dicom-probe analyze -q --format prom F             1 worker, and --workers N (default: CPUs)
     tshark -r CUT -d tcp.port==104,dicom -d tcp.port==11112,dicom -T fields -e dicom.pdu.type
                                                        Wireshark's DICOM decode, first 100k frames
     dicom-probe analyze -q --format prom CUT           the probe on the same cut
3. Checks the probe's counts against the truth: per (calling, called) pair the A-ASSOCIATE-RQs,
   accepts, rejects by result/source/reason, releases, aborts, DIMSE requests, responses by status
   class and unanswered requests; frames and bytes after the BPF filter; and that N workers give
   the same exposition as one.
4. Profiles one 1-worker run with cProfile on the first 200k frames and groups the time by stage.
5. Prints frames/s, MB/s, peak RSS and the ratios against the issue's targets; ``--write``
   regenerates BENCHMARKS.md from these measurements (nothing in it is typed by hand).

Each measurement is the median wall time of ``--repeat`` (default 5) runs. The machine may be
shared, so before every run the benchmark waits (up to 30 s) for other processes to go quiet,
measures the CPU they used during the run (/proc/stat minus the command's own user+system time),
repeats disturbed runs (up to four times as many runs in all) and keeps the least disturbed ones; the
load they still saw is reported next to every figure. Work files (cuts, outputs, profile) go to a
temporary directory under bench/.cache/, kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))

import make_capture  # noqa: E402

TARGETS = {
    "probe_vs_tcpdump": 0.25,  # one worker's frame rate >= 0.25 x tcpdump's
    "probe_vs_tshark": 20.0,  # >= 20 x tshark's DICOM decode
    "workers_speedup": 1.8,  # 2 workers >= 1.8 x one worker
}
DEFAULT_REPEAT = 5  # the median of 5: this kind of VM shows +-20 % between runs
CUT_FRAMES = 100_000
PROFILE_FRAMES = 200_000
PORTS = (104, 11112)

# Probe modules -> pipeline stages (README "How it works"). Functions listed in STAGE_FUNCS
# override their module's stage. Built-in (C) functions are charged to the stage of their callers,
# in proportion to the time spent under each caller.
STAGE_MODULES = [
    ("capture", ("probe/capture.py", "probe/offline.py")),
    ("decode", ("probe/decode.py",)),
    ("flows", ("probe/flows.py",)),
    ("stream", ("probe/stream.py", "probe/connection.py")),
    ("pdu", ("probe/dicom/pdu.py",)),
    ("association", ("probe/dicom/association.py", "probe/dicom/dimse.py", "probe/dicom/codes.py",
                     "probe/dicom/sopclasses.py")),
    ("metrics", ("probe/metrics.py", "probe/report.py", "probe/sites.py", "prometheus_client/")),
    ("pipeline", ("probe/pipeline.py",)),
]
STAGE_FUNCS = {("probe/pipeline.py", "_handle"): "metrics", ("probe/pipeline.py", "sync"): "metrics"}
STAGE_ORDER = ["capture", "decode", "flows", "stream", "pdu", "association", "metrics", "pipeline",
               "startup/other"]
STAGE_NOTES = {
    "capture": "libpcap reads + BPF (pcap dispatch, C), FileSource loop; with the compiled lane also the lane "
               "itself (C, called by dispatch, invisible to cProfile)",
    "decode": "Decoder: link/IP/TCP header parsing (full path only)",
    "flows": "FlowTable.segment, expiry, connection creation",
    "stream": "Connection.segment/_deliver, StreamReassembler",
    "pdu": "PduFramer.feed, control PDU decoding",
    "association": "AssociationMachine, DIMSE command sets",
    "metrics": "notification dispatch (Pipeline._handle), AssociationMetrics, MetricStore, rendering",
    "pipeline": "Pipeline.packet/_full/_commands: the Python fast lane (pure path), the compiled lane's hand-offs",
    "startup/other": "interpreter start-up, imports, config, CLI, stdlib",
}


# ------------------------------------------------------------------------------------------------
# Running and measuring.


class Measurement(dict):
    pass


def _tree_rss_kib(root: int, include_root: bool = True) -> int:
    """Summed VmRSS (KiB) of ``root`` and its descendants, found through /proc/PID/task/TID/children
    (cheap: only the tree is read, so that sampling does not steal CPU from what it measures)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            if include_root or pid != root:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * _PAGE_KIB
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return total


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_EVERY = 0.1  # seconds
_HZ = os.sysconf("SC_CLK_TCK")
QUIET_CPUS = 0.25  # a run is "quiet" when other processes used less CPU than this, on average
QUIET_WAIT_MAX = 60.0  # seconds to wait for a quiet machine before a run
MAX_ATTEMPTS = 4  # x --repeat: runs made at most while looking for quiet ones


def _cpu_busy() -> float:
    """CPU-seconds the whole machine has been busy (steal included: it is CPU we did not get)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / _HZ


def wait_quiet(log=None) -> float:
    """Wait (up to QUIET_WAIT_MAX) until other processes use less than QUIET_CPUS over one second;
    returns the last second's load in CPUs."""
    deadline = time.monotonic() + QUIET_WAIT_MAX
    said = False
    while True:
        b0, t0 = _cpu_busy(), time.monotonic()
        time.sleep(1.0)
        load = (_cpu_busy() - b0) / (time.monotonic() - t0)
        if load < QUIET_CPUS or time.monotonic() > deadline:
            return load
        if log and not said:
            log(f"    (waiting for other processes to quieten down: {load:.2f} CPUs busy)")
            said = True


def run_measured(cmd: list[str], stdout_path: str | os.PathLike | None, label: str, env: dict | None = None) -> Measurement:
    """Run ``cmd`` once; wall time (perf_counter around the whole process), peak RSS of the largest
    process (/usr/bin/time -v, else getrusage), peak summed RSS of the process tree (sampled)."""
    gnu_time = shutil.which("time") if os.path.exists("/usr/bin/time") else None
    tfile = tempfile.NamedTemporaryFile(prefix="time-", suffix=".txt", dir=CACHE, delete=False)
    tfile.close()
    full = (["/usr/bin/time", "-v", "-o", tfile.name] + cmd) if gnu_time else cmd
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    before = _children_maxrss()
    peak_tree = 0
    busy0 = _cpu_busy()
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=out, stderr=subprocess.PIPE, env={**os.environ, **env} if env else None)
    stop = threading.Event()

    def sample():
        nonlocal peak_tree
        while not stop.is_set():
            try:
                # under /usr/bin/time the command is the time process's child: don't count time
                peak_tree = max(peak_tree, _tree_rss_kib(proc.pid, include_root=not gnu_time))
            except OSError:
                pass
            stop.wait(SAMPLE_EVERY)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    busy = _cpu_busy() - busy0
    stop.set()
    th.join()
    if stdout_path:
        out.close()
    m = Measurement(label=label, cmd=" ".join(cmd), wall=wall, rc=proc.returncode,
                    stderr=err.decode(errors="replace")[-2000:],
                    peak_tree_kib=peak_tree if peak_tree >= 1024 else 0)  # < 1 MiB: caught at exec
    if gnu_time:
        text = Path(tfile.name).read_text()
        mm = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        m["maxrss_kib"] = int(mm.group(1)) if mm else None
        mm = re.search(r"Exit status: (\d+)", text)
        if mm:
            m["rc"] = int(mm.group(1))
        m["rss_source"] = "/usr/bin/time -v"
        cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
        m["own_cpu"] = sum(cpu) if len(cpu) == 2 else None
    else:
        after = _children_maxrss()
        m["maxrss_kib"] = after if after > before else None  # only a new maximum is attributable
        m["rss_source"] = "getrusage(RUSAGE_CHILDREN)"
        m["own_cpu"] = None
    os.unlink(tfile.name)
    # CPU used by everything else on the machine during the run, in CPUs (averaged over the run)
    m["other_cpus"] = max(0.0, (busy - m["own_cpu"]) / wall) if m["own_cpu"] is not None else None
    if m["rc"] != 0:
        raise SystemExit(f"{label}: exit status {m['rc']}\n$ {m['cmd']}\n{m['stderr']}")
    return m


def _children_maxrss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def measure(cmd, repeat: int, label: str, stdout_path=None, log=print, env: dict | None = None) -> dict:
    """Median wall time of the ``repeat`` least disturbed runs of ``cmd``. Before each run the
    benchmark waits for a quiet machine; it stops once ``repeat`` runs were quiet (other processes
    below QUIET_CPUS), else after MAX_ATTEMPTS x repeat runs. "contended": a run used had a load above."""
    runs = []
    attempt = 0
    while attempt < MAX_ATTEMPTS * repeat:
        if attempt == 1 and runs[0]["wall"] < 2.0:
            repeat *= 3  # a sub-second command: its median needs more runs
        if sum(1 for r in runs if r["quiet"]) >= repeat:
            break
        wait_quiet(log)
        m = run_measured(cmd, stdout_path, label, env)
        m["quiet"] = m["other_cpus"] is None or m["other_cpus"] < QUIET_CPUS
        runs.append(m)
        log(f"  {label}: run {attempt + 1}: {m['wall']:.2f} s, peak RSS {_mib(m.get('maxrss_kib'))}"
            f" (tree {_mib(m['peak_tree_kib'])}); other processes {_cpus(m['other_cpus'])}"
            + ("" if m["quiet"] else " (disturbed)"))
        attempt += 1
    used = sorted(runs, key=lambda r: r["other_cpus"] or 0.0)[:repeat]
    return {"label": label, "cmd": runs[0]["cmd"], "walls": [r["wall"] for r in runs],
            "other_cpus": [r["other_cpus"] for r in runs], "wall": statistics.median(r["wall"] for r in used),
            "runs_used": len(used), "contended": not all(r["quiet"] for r in used),
            "maxrss_kib": max((r["maxrss_kib"] or 0) for r in runs) or None,
            "peak_tree_kib": max(r["peak_tree_kib"] for r in runs) or None, "rss_source": runs[0]["rss_source"],
            "other_cpus_used": max((r["other_cpus"] or 0.0) for r in used)}


def quiet_once(cmd, stdout_path, label: str, log=print, tries: int = 3) -> dict:
    """One run on a quiet machine (retried up to ``tries`` times while others load the CPUs)."""
    for i in range(tries):
        wait_quiet(log)
        m = run_measured(cmd, stdout_path, label)
        m["quiet"] = m["other_cpus"] is None or m["other_cpus"] < QUIET_CPUS
        log(f"  {label}: {m['wall']:.2f} s; other processes {_cpus(m['other_cpus'])}"
            + ("" if m["quiet"] else " - contended" + (", again" if i + 1 < tries else "")))
        if m["quiet"]:
            break
    return m


def _cpus(x) -> str:
    return "n/a" if x is None else f"{x:.2f} CPUs"


def _mib(kib) -> str:
    return "n/a" if not kib else f"{kib / 1024:.0f} MiB"


# ------------------------------------------------------------------------------------------------
# Checking the probe's counts against the truth.


def prom_counts(text: str) -> dict:
    """Per-pair counts (summed over ``site``) and probe totals from a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    pairs: dict = defaultdict(lambda: {"requests": 0, "accepts": 0, "rejects": Counter(), "aborts": Counter(),
                                       "releases": 0, "dimse_requests": Counter(), "dimse_responses": Counter(),
                                       "dimse_unanswered": Counter()})
    totals: Counter = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name, lb, v = s.name, s.labels, s.value
            key = f"{lb.get('calling_ae')}|{lb.get('called_ae')}"
            n = int(round(v))
            if name == "dicom_association_requests_total":
                pairs[key]["requests"] += n
            elif name == "dicom_association_accepts_total":
                pairs[key]["accepts"] += n
            elif name == "dicom_association_rejects_total":
                pairs[key]["rejects"]["/".join((lb["result"], lb["source"], lb["reason"]))] += n
            elif name == "dicom_association_aborts_total":
                pairs[key]["aborts"]["/".join((lb["by"], lb["source"], lb["reason"], lb["phase"]))] += n
            elif name == "dicom_association_releases_total":
                pairs[key]["releases"] += n
            elif name == "dicom_dimse_requests_total":
                pairs[key]["dimse_requests"][lb["command"]] += n
            elif name == "dicom_dimse_responses_total":
                pairs[key]["dimse_responses"][f"{lb['command']}/{lb['status_class']}"] += n
            elif name == "dicom_dimse_unanswered_total":
                pairs[key]["dimse_unanswered"][lb["command"]] += n
            elif name in ("dicom_probe_packets_total", "dicom_probe_bytes_total",
                          "dicom_probe_stream_gaps_total", "dicom_probe_resyncs_total",
                          "dicom_probe_retransmitted_segments_total", "dicom_association_no_response_total",
                          "dicom_association_closed_without_release_total"):
                totals[name] += n
            elif name in ("dicom_probe_pdu_errors_total", "dicom_probe_protocol_violations_total",
                          "dicom_probe_frames_skipped_total", "dicom_probe_dimse_errors_total"):
                totals[name] += n
    for p in pairs.values():
        for k in ("rejects", "aborts", "dimse_requests", "dimse_responses", "dimse_unanswered"):
            p[k] = {a: b for a, b in p[k].items() if b}
    return {"pairs": dict(pairs), "totals": dict(totals)}


def check_counts(truth: dict, prom_text: str, frames_filtered: bool = False) -> dict:
    """The probe's exposition against the generator's truth; ``frames_filtered``: the run dropped
    frames in BPF (--drop-pure-acks), so the frame and byte totals are not compared."""
    got = prom_counts(prom_text)
    problems: list[str] = []
    fields = ("requests", "accepts", "rejects", "aborts", "releases", "dimse_requests", "dimse_responses",
              "dimse_unanswered")
    want_pairs = truth["pairs"]
    checked = 0
    for key in sorted(set(want_pairs) | set(got["pairs"])):
        w, g = want_pairs.get(key), got["pairs"].get(key)
        if w is None:
            if any(g[f] for f in fields):
                problems.append(f"{key}: not in the truth, probe reports {_brief(g)}")
            continue
        if g is None:
            problems.append(f"{key}: missing from the probe's output (truth {_brief(w)})")
            continue
        for f in fields:
            a, b = w[f], g[f]
            if isinstance(a, dict):
                a = {k: v for k, v in a.items() if v}
            if a != b:
                problems.append(f"{key} {f}: truth {a}, probe {b}")
            checked += 1
    t = got["totals"]
    for name, want in (("dicom_probe_packets_total", truth["dicom_frames"]),
                       ("dicom_probe_bytes_total", truth["dicom_bytes"])):
        if t.get(name, 0) != want and not frames_filtered:
            problems.append(f"{name}: truth {want}, probe {t.get(name, 0)}")
    for name in ("dicom_probe_stream_gaps_total", "dicom_probe_resyncs_total", "dicom_probe_pdu_errors_total",
                 "dicom_probe_protocol_violations_total", "dicom_probe_frames_skipped_total",
                 "dicom_probe_dimse_errors_total", "dicom_association_no_response_total",
                 "dicom_association_closed_without_release_total"):
        if t.get(name, 0):
            problems.append(f"{name}: {t[name]} (expected 0)")
    return {"ok": not problems, "pairs": len(want_pairs), "values_checked": checked, "problems": problems,
            "totals": t}


def _brief(p: dict) -> str:
    return (f"rq {p['requests']} ac {p['accepts']} rj {sum(p['rejects'].values())} "
            f"ab {sum(p['aborts'].values())} rel {p['releases']}")


# ------------------------------------------------------------------------------------------------
# Profile grouped by stage.


def _stage_of(filename: str, func: str) -> str | None:
    if func == "<module>":
        return "startup/other"  # module-level code runs at import
    f = filename.replace("\\", "/")
    for (mod, name), stage in STAGE_FUNCS.items():
        if f.endswith(mod) and func == name:
            return stage
    for stage, mods in STAGE_MODULES:
        for m in mods:
            if (m.endswith("/") and f"/{m}" in f) or f.endswith(m):
                return stage
    return None


def profile_by_stage(prof_path: str, top: int = 80) -> dict:
    """Self time per stage. A probe function belongs to its module's stage; any other function
    (C built-ins, dataclass-generated __init__, stdlib such as ipaddress) is charged to the stages
    of its callers, recursively, in proportion to the time it spent under each; what no probe code
    called (imports, start-up) is "startup/other"."""
    st = pstats.Stats(prof_path)
    stats = st.stats  # (file, line, func) -> (cc, nc, tt, ct, callers{caller: (cc, nc, tt, ct)})
    memo: dict = {}

    def dist(fn, depth=0, seen=frozenset()) -> dict:
        """fn's time as {stage: fraction}."""
        if fn in memo:
            return memo[fn]
        own = _stage_of(fn[0], fn[2])
        if own is not None:
            d = {own: 1.0}
        else:
            callers = stats.get(fn, (0, 0, 0, 0, {}))[4]
            weights = {c: v[2] for c, v in callers.items() if c not in seen}
            total_w = sum(weights.values())
            if not weights or depth > 12:
                d = {"startup/other": 1.0}
            else:
                d = {}
                n = len(weights)
                for c, w in weights.items():
                    share = w / total_w if total_w > 0 else 1.0 / n
                    for s, f in dist(c, depth + 1, seen | {fn}).items():
                        d[s] = d.get(s, 0.0) + share * f
        if depth == 0 or own is not None:
            memo[fn] = d
        return d

    stage_tt: Counter = Counter()
    stage_calls: Counter = Counter()
    total = 0.0
    funcs = []
    for fn, (cc, nc, tt, ct, callers) in stats.items():
        total += tt
        d = dist(fn)
        for s, f in d.items():
            stage_tt[s] += tt * f
        main = max(d, key=d.get)
        stage_calls[main] += nc
        file, line, name = fn
        short = file
        if "probe/" in file:
            short = file[file.rindex("probe/"):]
        elif file != "~":
            short = Path(file).name
        label = main if _stage_of(file, name) is not None else f"({main})"
        funcs.append({"stage": label, "func": f"{short}:{line}({name})" if file != "~" else name,
                      "calls": nc, "tottime": tt, "cumtime": ct})
    funcs.sort(key=lambda f: -f["tottime"])
    return {"total": total, "stages": {s: stage_tt.get(s, 0.0) for s in STAGE_ORDER},
            "stage_calls": dict(stage_calls), "top": funcs[:top]}


# ------------------------------------------------------------------------------------------------
# Environment.


def lane_built() -> bool:
    """The compiled fast lane (probe/_lane.c) is importable in the probe's interpreter."""
    r = subprocess.run([sys.executable, "-c", "import probe._lane"], capture_output=True, cwd=REPO)
    return r.returncode == 0


def machine() -> dict:
    info = {"python": platform.python_version(), "kernel": platform.release(), "platform": platform.platform()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpu, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
        info["logical_cpus"] = os.cpu_count()
        cores = {(a, b) for a, b in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", cpu, re.S)}
        info["physical_cores"] = len(cores) or None
        m = re.search(r"^flags\s*:.*\bhypervisor\b", cpu, re.M)
        info["virtualized"] = bool(m)
    except OSError:
        info["cpu"], info["logical_cpus"] = platform.processor(), os.cpu_count()
    try:
        mem = Path("/proc/meminfo").read_text()
        info["ram_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    try:
        v = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True).stdout
        info["tcpdump"] = re.search(r"tcpdump version (\S+)", v).group(1)
        info["libpcap"] = re.search(r"libpcap version (\S+)", v).group(1)
    except (OSError, AttributeError):
        pass
    try:
        v = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
        info["tshark"] = re.search(r"TShark \(Wireshark\) (\S+)", v).group(1)
    except (OSError, AttributeError):
        pass
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        info["note"] = ("PYTHONDONTWRITEBYTECODE is set in this environment and the probe is an editable install, "
                        "so every dicom-probe start compiles its modules from source (about 0.1 s of the start-up "
                        "below); an installed package with compiled .pyc files starts faster.")
    try:
        import pcap
        info["pypcap"] = getattr(pcap, "__version__", "?")
    except ImportError:
        pass
    try:
        import probe
        info["probe_version"] = probe.__version__
    except (ImportError, AttributeError):
        pass
    info["lane"] = lane_built()
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "probe"],
                               capture_output=True, text=True).stdout.strip()
        info["git"] = head + (" (probe/ has uncommitted changes)" if dirty else "")
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------------------------
# Main.


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--frames", type=int, default=make_capture.DEFAULT_FRAMES)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=make_capture.DEFAULT_SEED)
    ap.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                    help=f"runs per measurement; the median is used (default {DEFAULT_REPEAT})")
    ap.add_argument("--keep", action="store_true", help="keep the work files (cuts, outputs, profile)")
    ap.add_argument("--write", action="store_true", help="regenerate BENCHMARKS.md from this run")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rewrite BENCHMARKS.md from the saved results of the last run with these "
                         "--frames/--seed (bench/.cache/results-*.json)")
    ap.add_argument("--no-paths", action="store_true", help="skip bench/paths.py (per-packet paths, unprofiled)")
    ap.add_argument("--no-storm", action="store_true", help="skip bench/storm.py (reject storm, associations/s)")
    ap.add_argument("--no-perf", action="store_true", help="skip the perf profile by binary (needs linux-perf)")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = CACHE / f"results-{args.frames}-s{args.seed}.json"
        results = json.loads(saved.read_text())
        (REPO / "BENCHMARKS.md").write_text(benchmarks_md(results))
        print(f"wrote BENCHMARKS.md from {saved.relative_to(REPO)} (run of {results['date']})")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    _ensure_gitignore()
    log = lambda m: print(m, flush=True)  # noqa: E731

    capture = make_capture.default_path(args.frames, args.seed)
    truth_path = capture.with_name(capture.name + ".truth.json")
    if capture.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        log(f"capture (cached): {capture.relative_to(REPO)}")
    else:
        for stale in CACHE.glob(f"dicom-{args.frames}-s{args.seed}-*.pcap*"):  # other generator versions
            stale.unlink()
        log(f"generating {args.frames:,} frames -> {capture.relative_to(REPO)} (cached for later runs)")
        truth = make_capture.generate(args.frames, capture, args.seed)
    log(make_capture.summary_text(truth))

    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": machine(), "args": vars(args), "capture": _capture_info(truth, capture),
                     "measurements": {}}
    try:
        _run_all(args, capture, truth, work, results, log)
    finally:
        if args.keep:
            log(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out_json = CACHE / f"results-{args.frames}-s{args.seed}.json"
    out_json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    log("\n" + report_text(results))
    log(f"\nresults: {out_json.relative_to(REPO)}")
    if args.write:
        (REPO / "BENCHMARKS.md").write_text(benchmarks_md(results))
        log("wrote BENCHMARKS.md")
    return 0 if results["check"]["ok"] else 1


def _ensure_gitignore() -> None:
    gi = HERE / ".gitignore"
    if not gi.exists():
        gi.write_text(".cache/\n__pycache__/\n")


def _capture_info(truth: dict, capture: Path) -> dict:
    keys = ("frames", "bytes", "file_bytes", "dicom_frames", "dicom_bytes", "frames_by_family", "dicom_frame_sizes",
            "dicom_frames_by_worker_shard",
            "duration_seconds", "associations", "associations_by_kind", "associations_by_outcome", "dimse_requests",
            "concurrent_connections", "distinct_ae_titles", "generator")
    info = {k: truth[k] for k in keys if k in truth}
    info["pairs"] = len(truth["pairs"])
    info["path"] = str(capture.relative_to(REPO))
    return info


def flow_memory(n: int = 20_000) -> dict:
    """Bytes the flow table allocates per tracked connection (tracemalloc, in this process): a
    connection seen only in its handshake (SYN, SYN-ACK), and one whose A-ASSOCIATE-RQ arrived
    (Connection, streams, framer, association machine with its association and DIMSE tracker)."""
    import struct
    import tracemalloc

    from probe.decode import TCP_ACK, TCP_SYN
    from probe.flows import FlowSettings, FlowTable

    body = struct.pack(">HH", 1, 0) + b"PACS_MAIN".ljust(16) + b"CT_REMOTE1".ljust(16) + b"\0" * 32
    rq = struct.pack(">BxI", 1, len(body)) + body
    server = bytes([198, 18, 0, 10])
    out: dict = {}
    for kind in ("handshake", "association"):
        table, events = FlowTable(FlowSettings(max_flows=10 * n)), []
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            client, port = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]), 40000 + i % 20000
            table.segment((client, server, port, 104, 7, 0, TCP_SYN, b""), 1.0, events)
            table.segment((server, client, 104, port, 9, 8, TCP_SYN | TCP_ACK, b""), 1.0, events)
            if kind == "association":
                table.segment((client, server, port, 104, 8, 10, TCP_ACK, rq), 1.0, events)
            events.clear()
        out[kind] = round((tracemalloc.get_traced_memory()[0] - base) / n)
        tracemalloc.stop()
        del table
    out["flows"] = n
    return out


def _run_all(args, capture: Path, truth: dict, work: Path, results: dict, log) -> None:
    frames = truth["frames"]
    M = results["measurements"]
    results["flow_memory"] = flow_memory()
    log(f"memory per tracked flow: {results['flow_memory']}")
    probe = [sys.executable, "-m", "probe", "analyze", "-q", "--format", "prom"]
    # warm the page cache so that the first measurement is not the only one paying for the disk
    with open(capture, "rb") as f:
        while f.read(1 << 24):
            pass

    cut = work / "cut-100k.pcap"
    cut_n = min(CUT_FRAMES, frames)
    subprocess.run(["editcap", "-r", str(capture), str(cut), f"1-{cut_n}"], check=True)
    log(f"\nmeasuring ({args.repeat} run(s) each, median wall time)")

    one = work / "one-frame.pcap"
    subprocess.run(["editcap", "-r", str(capture), str(one), "1"], check=True)
    M["probe_startup"] = measure(probe + [str(one)], args.repeat, "dicom-probe analyze (1-frame file: start-up)",
                                 log=log)
    M["tcpdump"] = measure(["tcpdump", "-r", str(capture), "-w", "/dev/null"], args.repeat,
                           "tcpdump -r F -w /dev/null", log=log)
    prom1 = work / "probe-1.prom"
    M["probe_1"] = measure(probe + [str(capture)], args.repeat, "dicom-probe analyze (1 worker)", prom1, log=log)
    if lane_built():
        M["probe_1_pure"] = measure(probe + [str(capture)], args.repeat,
                                    "dicom-probe analyze (1 worker, pure Python: DICOM_PROBE_PURE_PYTHON=1)",
                                    work / "probe-1-pure.prom", log=log, env={"DICOM_PROBE_PURE_PYTHON": "1"})
    prom_lean = work / "probe-1-lean.prom"
    M["probe_1_lean"] = measure(probe + ["--drop-pure-acks", str(capture)], args.repeat,
                                "dicom-probe analyze (1 worker, --drop-pure-acks)", prom_lean, log=log)
    promn = work / f"probe-{args.workers}.prom"
    M["probe_n"] = measure(probe + ["--workers", str(args.workers), str(capture)], args.repeat,
                           f"dicom-probe analyze --workers {args.workers}", promn, log=log)
    tshark_out = work / "tshark.txt"
    M["tshark_cut"] = measure(["tshark", "-r", str(cut), "-d", "tcp.port==104,dicom", "-d", "tcp.port==11112,dicom",
                               "-T", "fields", "-e", "dicom.pdu.type"], args.repeat,
                              f"tshark DICOM decode ({cut_n // 1000}k cut)", tshark_out, log=log)
    M["probe_cut"] = measure(probe + [str(cut)], args.repeat, f"dicom-probe analyze ({cut_n // 1000}k cut)",
                             work / "probe-cut.prom", log=log)
    for key, n, path in (("tcpdump", frames, capture), ("probe_1", frames, capture), ("probe_1_pure", frames, capture),
                         ("probe_1_lean", frames, capture), ("probe_n", frames, capture),
                         ("tshark_cut", cut_n, cut), ("probe_cut", cut_n, cut), ("probe_startup", 1, one)):
        m = M.get(key)
        if m is None:
            continue
        m["frames"] = n
        m["file_bytes"] = path.stat().st_size
        m["fps"] = n / m["wall"]
        m["mbps"] = m["file_bytes"] / m["wall"] / 1e6
    lines = tshark_out.read_text().splitlines()
    M["tshark_cut"]["frames_with_dicom_pdus"] = sum(1 for ln in lines if ln.strip())

    results["ratios"] = {
        "probe_vs_tcpdump": M["probe_1"]["fps"] / M["tcpdump"]["fps"],
        "probe_vs_tshark": M["probe_cut"]["fps"] / M["tshark_cut"]["fps"],
        "workers_speedup": M["probe_n"]["fps"] / M["probe_1"]["fps"],
    }
    results["workers"] = args.workers
    shard = truth.get("dicom_frames_by_worker_shard", {}).get(str(args.workers))
    if shard:
        results["shard_balance"] = {"frames": shard, "max_share": max(shard) / sum(shard),
                                    "ideal_speedup": sum(shard) / max(shard)}

    # correctness
    t1, tn = prom1.read_text(), promn.read_text()
    chk = check_counts(truth, t1)
    chk_n = check_counts(truth, tn)
    same = prom_counts(t1) == prom_counts(tn)
    chk_lean = check_counts(truth, prom_lean.read_text(), frames_filtered=True)
    lean_frames = chk_lean["totals"].get("dicom_probe_packets_total", 0)
    results["check"] = {"ok": chk["ok"] and chk_n["ok"] and same and chk_lean["ok"], "one_worker": chk,
                        "n_workers": chk_n, "n_workers_same_counts": same, "n_workers_identical_text": t1 == tn,
                        "drop_pure_acks": chk_lean, "drop_pure_acks_frames_decoded": lean_frames}
    log(f"\ncheck against the truth: 1 worker {'OK' if chk['ok'] else 'MISMATCH'} "
        f"({chk['values_checked']} values over {chk['pairs']} pairs); {args.workers} workers "
        f"{'OK' if chk_n['ok'] else 'MISMATCH'}; same counts: {same}")
    log(f"--drop-pure-acks: {'OK' if chk_lean['ok'] else 'MISMATCH'}; it decoded {lean_frames:,} of the "
        f"{truth['dicom_frames']:,} DICOM frames")
    for p in (chk["problems"] + chk_n["problems"] + chk_lean["problems"])[:20]:
        log(f"  {p}")

    if not args.no_paths:
        log("\nper-packet paths over the whole capture (bench/paths.py) ...")
        pj = work / "paths.json"
        m = quiet_once([sys.executable, str(HERE / "paths.py"), str(capture), "--json", str(pj)], None,
                       "bench/paths.py (whole capture)", log=log)
        results["paths"] = json.loads(pj.read_text())
        results["paths"]["other_cpus"] = m["other_cpus"]

    if not args.no_perf:
        log("\nperf profile by binary ...")
        results["perf"] = perf_by_binary(probe + [str(capture)], work, log)

    if not args.no_storm:
        import storm
        log("\nreject storm (bench/storm.py) ...")
        results["storm"] = storm.run(storm.DEFAULT_ASSOCIATIONS, storm.DEFAULT_RATE, args.repeat, CACHE)
        log(storm.text(results["storm"]))

    if not args.no_profile:
        pcut = work / "cut-200k.pcap"
        pn = min(PROFILE_FRAMES, frames)
        subprocess.run(["editcap", "-r", str(capture), str(pcut), f"1-{pn}"], check=True)
        # the same run without the profiler, for the profiler's overhead
        plain = quiet_once(probe + [str(pcut)], None, f"dicom-probe analyze ({pn // 1000}k cut, no profiler)", log=log)
        prof = work / "probe.prof"
        m = quiet_once([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "probe", "analyze", "-q",
                        "--format", "prom", str(pcut)], None, f"cProfile ({pn // 1000}k cut)", log=log)
        prof_res = profile_by_stage(str(prof))
        prof_res.update(frames=pn, wall_profiled=m["wall"], wall_plain=plain["wall"], other_cpus=m["other_cpus"],
                        other_cpus_plain=plain["other_cpus"])
        results["profile"] = prof_res
        if args.keep:
            shutil.copy(prof, CACHE / "probe.prof")


# ------------------------------------------------------------------------------------------------
# Reports.


# What each binary's samples stand for, in the perf profile.
PERF_BINARIES = (
    ("libpython", "the interpreter: all Python code (full path, DIMSE, metrics, the pure-Python parts)"),
    ("[kernel", "the kernel: reading the file (page-cache copies), page faults"),
    ("_lane.", "the compiled lane (probe/_lane.c)"),
    ("libpcap", "libpcap: reading records, the BPF filter"),
    ("pcap.cpython", "pypcap: its dispatch loop, a bytes object and a call per frame"),
    ("libc.", "the C library: memory copies and allocation, for all of the above"),
)


def perf_by_binary(cmd: list[str], work: Path, log=print) -> dict | None:
    """Share of CPU samples per binary (``perf record`` + ``perf report --sort dso``), or None when
    perf is missing or not allowed here."""
    perf = shutil.which("perf")
    if perf is None:
        log("  perf not installed (Debian: linux-perf): skipped")
        return None
    data = work / "perf.data"
    wait_quiet(log)
    rec = subprocess.run([perf, "record", "-F", "999", "-o", str(data), "--", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if rec.returncode != 0 or not data.exists():
        log(f"  perf record failed: {rec.stderr.strip().splitlines()[-1:] or rec.returncode}: skipped")
        return None
    rep = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso", "--stdio"], capture_output=True, text=True)
    shares = [(m.group(2).strip(), float(m.group(1))) for m in re.finditer(r"^\s*([\d.]+)%\s+(\S.*)$", rep.stdout, re.M)]
    samples = re.search(r"^# Samples: (\S+)", rep.stdout, re.M)
    out = {"cmd": "perf record -F 999 -- python3 -m probe analyze -q --format prom F", "shares": shares,
           "samples": samples.group(1) if samples else None}
    log("  " + ", ".join(f"{name} {pct:.1f}%" for name, pct in shares[:6]))
    return out


def _why_not_met(results: dict) -> list[str]:
    """Paragraphs on the time budget each unmet ratio target leaves (from this run's figures)."""
    M, r, pa = results["measurements"], results["ratios"], results.get("paths")
    out = []
    start = M["probe_startup"]["wall"]
    if r["probe_vs_tcpdump"] < TARGETS["probe_vs_tcpdump"] and pa:
        budget = M["probe_1"]["frames"] / (TARGETS["probe_vs_tcpdump"] * M["tcpdump"]["fps"])
        left = budget - start - pa["floor_dispatch_noop_s"]
        out.append(
            f"Why the tcpdump ratio is not met: {TARGETS['probe_vs_tcpdump']:g}x would mean {budget:.2f} s for the "
            f"whole run. Start-up ({start:.2f} s) and libpcap's dispatch into any Python callable "
            f"({pa['floor_dispatch_noop_s']:.2f} s, measured with a no-op callback) leave {left:.2f} s, while the "
            f"per-message Python work alone takes {pa['full_seconds'] + pa['commands_seconds']:.2f} s "
            f"(the full path for {pa['full_frames']:,} frames, that is every association's set-up and end: "
            f"{pa['full_seconds']:.2f} s; DIMSE for {pa['commands_values']:,} command values: "
            f"{pa['commands_seconds']:.2f} s; as bench/paths.py below times them, its own timing overhead included). "
            f"Getting there takes the capture loop, "
            f"command decoding and association counting in C, not a faster fast lane.\n")
    if r["probe_vs_tshark"] < TARGETS["probe_vs_tshark"]:
        budget = M["probe_cut"]["frames"] / (TARGETS["probe_vs_tshark"] * M["tshark_cut"]["fps"])
        out.append(
            f"Why the tshark ratio is not met: {TARGETS['probe_vs_tshark']:g}x on the cut would mean {budget:.2f} s in "
            f"all, against {start:.2f} s for the probe's start-up alone (an interpreter, its imports; this "
            f"environment compiles them from source, see above).\n")
    st = results.get("storm")
    if r["workers_speedup"] < TARGETS["workers_speedup"] and st:
        sp = st["two_workers"]["associations_per_s"] / st["one_worker"]["associations_per_s"]
        out.append(
            f"Two workers scale with the number of connections that carry the work: on the reject storm below "
            f"({st['associations']:,} connections) the same two workers give {sp:.2f}x; on this mix a few bulk connections carry "
            f"most frames (see the next paragraph).\n")
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def table_rows(results: dict) -> list[tuple]:
    M = results["measurements"]
    rows = []
    for key in ("tcpdump", "probe_1", "probe_1_pure", "probe_1_lean", "probe_n", "tshark_cut", "probe_cut",
                "probe_startup"):
        m = M.get(key)
        if m is None:
            continue
        rows.append((m["label"] + (" (contended)" if m.get("contended") else ""), f"{m['frames']:,}",
                     f"{m['wall']:.2f}", f"{m['runs_used']}/{len(m['walls'])}", f"{m['other_cpus_used']:.2f}",
                     _fmt_rate(m["fps"]) if key != "probe_startup" else "-",
                     f"{m['mbps']:.1f}" if key != "probe_startup" else "-",
                     _mib(m.get("maxrss_kib")), _mib(m.get("peak_tree_kib"))))
    return rows


# ratio -> (numerator, denominator) measurements (frame rates)
RATIO_PARTS = {"probe_vs_tcpdump": ("probe_1", "tcpdump"), "probe_vs_tshark": ("probe_cut", "tshark_cut"),
               "workers_speedup": ("probe_n", "probe_1")}


def verdict(results: dict, key: str) -> str:
    """met / NOT met; "inconclusive" when a contended measurement could have flipped it. A run that
    shared the machine with processes using L CPUs is taken to be at most (1 + L) times slower than
    on an idle machine: a slow numerator lowers the ratio (NOT met may be wrong), a slow denominator
    raises it (met may be wrong)."""
    M = results["measurements"]
    ratio, target = results["ratios"][key], TARGETS[key]
    num, den = RATIO_PARTS[key]
    met = ratio >= target
    if met and M[den].get("contended") and ratio / (1 + M[den]["other_cpus_used"]) < target:
        return f"inconclusive (met, but {M[den]['label']} was contended)"
    if not met and M[num].get("contended") and ratio * (1 + M[num]["other_cpus_used"]) >= target:
        return f"inconclusive (NOT met, but {M[num]['label']} was contended)"
    return "met" if met else "NOT met"


def target_rows(results: dict) -> list[tuple]:
    r, w = results["ratios"], results["workers"]
    out = []
    for key, label in (("probe_vs_tcpdump", "1 worker frame rate / tcpdump frame rate"),
                       ("probe_vs_tshark", f"probe / tshark frame rate ({results['measurements']['tshark_cut']['frames'] // 1000}k cut)"),
                       ("workers_speedup", f"{w} workers / 1 worker")):
        target = TARGETS[key]
        note = ""
        if key == "workers_speedup" and w != 2:
            note = " (target is for 2 workers)"
        out.append((label, f"{r[key]:.3g}x", f">= {target:g}x{note}", verdict(results, key)))
    return out


def report_text(results: dict) -> str:
    lines = []
    hdr = ("measurement", "frames", "wall s", "runs", "others", "frames/s", "MB/s", "peak RSS", "peak RSS (tree)")
    rows = table_rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    for row in [hdr] + rows:
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.append("")
    for label, val, target, verdict in target_rows(results):
        lines.append(f"{label}: {val} (target {target}): {verdict}")
    chk = results["check"]
    lines.append(f"counts vs truth: {'exact' if chk['ok'] else 'MISMATCH'}")
    if "paths" in results:
        import paths as paths_mod
        lines.append("\nper-packet paths (bench/paths.py, unprofiled, whole capture):")
        lines.append(paths_mod.text(results["paths"]))
    if "profile" in results:
        p = results["profile"]
        lines.append(f"\nprofile (cProfile, 1 worker, first {p['frames']:,} frames; {p['wall_plain']:.2f} s unprofiled, "
                     f"{p['wall_profiled']:.2f} s profiled):")
        for s in STAGE_ORDER:
            v = p["stages"].get(s, 0.0)
            lines.append(f"  {s:14} {v:7.2f} s  {100 * v / p['total']:5.1f}%")
        lines.append("  top functions by stage (self time, calls):")
        for s in STAGE_ORDER:
            fs = [f for f in p["top"] if f["stage"].strip("()") == s][:5]
            if not fs:
                continue
            lines.append(f"   {s}:")
            for f in fs:
                lines.append(f"    {f['tottime']:6.2f} s {f['calls']:>10,}  {f['func']}")
    return "\n".join(lines)


def _md_table(hdr, rows, align: str | None = None) -> str:
    """``align``: one letter per column, l or r (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(hdr) - 1)
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


LIVE_RESULTS = (("live", "python3 bench/live.py --pps 100000 --seconds 60 --json bench/.cache/live.json"),
                ("soak", "python3 bench/live.py --soak --seconds 600 --pps 20000 --json bench/.cache/soak.json"))


def live_section() -> list[str]:
    """The live-capture and soak runs of bench/live.py, when their results are in bench/.cache."""
    L: list[str] = []
    for name, cmd in LIVE_RESULTS:
        path = HERE / ".cache" / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        if not L:
            L.append("## Live capture (bench/live.py)\n")
            L.append("The capture above replayed with tcpreplay (`--unique-ip`: every loop's connections are new "
                     "ones) onto a veth in a private network namespace, captured live by `dicom-probe run`; "
                     "kernel drops from pcap stats, counts checked against the loops x the generator's truth.\n")
        L.append(f"### {'Replay' if name == 'live' else 'Soak'} ({r.get('date', '?')}, git {r['machine'].get('git', '?')})\n")
        L.append("```")
        L.append(f"$ {cmd}")
        L.extend(line.rstrip() for line in r["report"].strip("\n").splitlines())
        L.append("```\n")
    return L


def benchmarks_md(results: dict) -> str:
    m = results["machine"]
    c = results["capture"]
    M = results["measurements"]
    args = results["args"]
    chk = results["check"]
    cmd = "python3 bench/run.py --write"
    non_default = []
    if args["frames"] != make_capture.DEFAULT_FRAMES:
        non_default.append(f"--frames {args['frames']}")
    if args["workers"] != (os.cpu_count() or 2):
        non_default.append(f"--workers {args['workers']}")
    if args["repeat"] != DEFAULT_REPEAT:
        non_default.append(f"--repeat {args['repeat']}")
    if args["seed"] != make_capture.DEFAULT_SEED:
        non_default.append(f"--seed {args['seed']}")
    if non_default:
        cmd += " " + " ".join(non_default)
    fam = c["frames_by_family"]
    sizes = c["dicom_frame_sizes"]
    L = []
    L.append("# dicom-probe benchmarks\n")
    L.append("Generated by `" + cmd + "` on " + results["date"] + "; every figure below comes from that run "
             "(the raw numbers are in `bench/.cache/results-*.json`). Re-run the command to refresh this file.\n")
    L.append("## Machine\n")
    L.append(_md_table(("", ""), align="ll", rows=[
        ("CPU", f"{m.get('cpu')}" + (" (virtual machine)" if m.get("virtualized") else "")),
        ("cores", f"{m.get('logical_cpus')} logical" + (f", {m['physical_cores']} physical" if m.get("physical_cores") else "")),
        ("RAM", f"{m.get('ram_gib')} GiB"),
        ("kernel", m.get("kernel")),
        ("Python", m.get("python")),
        ("libpcap", f"{m.get('libpcap')} (pypcap {m.get('pypcap')})"),
        ("tcpdump / tshark", f"{m.get('tcpdump')} / {m.get('tshark')}"),
        ("dicom-probe", f"{m.get('probe_version')}, git {m.get('git')}"),
        ("compiled lane (probe/_lane.c)", "built (the default measurements use it)" if m.get("lane") else
         "NOT built: every measurement is the pure-Python path"),
    ]))
    if m.get("note"):
        L.append("\n" + m["note"])
    L.append("")
    L.append("## Capture\n")
    L.append(f"`python3 bench/make_capture.py --frames {c['frames']}` (seed {c['generator']['seed']}; cached as "
             f"`{c['path']}`): {c['frames']:,} frames, {c['file_bytes'] / 1e6:,.0f} MB, "
             f"{c['duration_seconds']:.0f} s of traffic, Ethernet/IPv4/TCP, MTU 1500, MSS 1448. All DICOM PDUs are "
             f"real ones cut from the committed fixture captures (DCMTK 3.6.7, pynetdicom 3.0.4) with new AE titles, "
             f"message IDs and object sizes; see the docstring of `bench/make_capture.py`.\n")
    L.append(f"- frames by family: bulk C-STORE {fam.get('bulk', 0):,} ({100 * fam.get('bulk', 0) / c['frames']:.0f}%), "
             f"C-FIND {fam.get('find', 0):,} ({100 * fam.get('find', 0) / c['frames']:.0f}%), short associations "
             f"{fam.get('short', 0):,} ({100 * fam.get('short', 0) / c['frames']:.0f}%), non-DICOM noise dropped by "
             f"the BPF filter {fam.get('noise', 0):,} ({100 * fam.get('noise', 0) / c['frames']:.0f}%)")
    L.append(f"- DICOM frames: {c['dicom_frames']:,}; full 1514-byte segments {sizes.get('1514', 0):,}, pure ACKs "
             f"{sizes.get('66-ack', 0):,}, 12-byte P-DATA+PDV header segments {sizes.get('78-12B', 0):,}, other "
             f"{sizes.get('other', 0):,}")
    L.append(f"- {c['associations']:,} associations: " + ", ".join(f"{k} {v:,}" for k, v in c["associations_by_kind"].items())
             + "; outcomes: " + ", ".join(f"{k} {v:,}" for k, v in c["associations_by_outcome"].items()))
    L.append("- DIMSE requests: " + ", ".join(f"{k} {v:,}" for k, v in sorted(c["dimse_requests"].items())))
    L.append(f"- {c['pairs']} AE pairs, {c['distinct_ae_titles']} distinct AE titles; TCP connections open at once: "
             f"max {c['concurrent_connections']['max']}, mean {c['concurrent_connections']['mean']}\n")
    L.append("## Results\n")
    L.append(f"Wall time of the whole process (start-up included), median of {args['repeat']} runs. This "
             f"machine may be shared: before each run the benchmark waits for other processes to go quiet, measures "
             f"the CPU they used during the run (/proc/stat minus the command's own user+system time; \"other "
             f"CPU\" is the largest such load among the runs used, in CPUs) and repeats a run during which they "
             f"used {QUIET_CPUS} CPU or more, up to {MAX_ATTEMPTS} times the number of runs, then keeps the {args['repeat']} "
             f"least disturbed (\"runs used\": used / made; \"contended\": a run used still had other processes "
             f"above {QUIET_CPUS} CPU; for runs well under a second the load estimate is coarse, /proc/stat counts "
             f"in 10 ms ticks). "
             f"Frames/s counts every frame in the file (the probe's BPF filter drops the noise; tcpdump reads all). "
             f"MB/s is file bytes per second. Peak RSS: the largest single process "
             f"({M['probe_1']['rss_source']}); \"tree\": the peak of the summed RSS of the process and its children, "
             f"sampled every 100 ms (the N-worker run is several processes).\n")
    L.append(_md_table(("measurement", "frames", "wall s", "runs used", "other CPU", "frames/s", "MB/s", "peak RSS",
                        "peak RSS (tree)"), table_rows(results)))
    L.append("")
    effect = {"tcpdump": "makes the probe / tcpdump ratio look better than it is",
              "probe_1": "makes the probe / tcpdump ratio look worse and the worker speed-up better than they are",
              "probe_1_pure": "overstates what the pure-Python path costs",
              "probe_n": "makes the worker speed-up look worse than it is",
              "tshark_cut": "makes the probe / tshark ratio look better than it is",
              "probe_cut": "makes the probe / tshark ratio look worse than it is",
              "probe_startup": "overstates the start-up time"}
    busy = [k for k, m in M.items() if m.get("contended")]
    if busy:
        L.append("**Other processes were using the CPUs** during runs that had to be kept: "
                 + "; ".join(f"{M[k]['label']} (up to {M[k]['other_cpus_used']:.2f} of "
                             f"{results['machine'].get('logical_cpus')} CPUs), which is therefore slower than on an "
                             f"idle machine and {effect.get(k, 'biases the ratios that use it')}" for k in busy) + ".\n")
    L.append("Commands (F = the capture, CUT = its first 100,000 frames, `editcap -r F CUT 1-100000`):\n")
    L.append("```")
    L.append("tcpdump -r F -w /dev/null")
    L.append("python3 -m probe analyze -q --format prom F                    # = dicom-probe analyze ...")
    if "probe_1_pure" in M:
        L.append("DICOM_PROBE_PURE_PYTHON=1 python3 -m probe analyze -q --format prom F   # the fallback path")
    if "probe_1_lean" in M:
        L.append("python3 -m probe analyze -q --format prom --drop-pure-acks F   # pure ACKs dropped by BPF")
    L.append(f"python3 -m probe analyze -q --format prom --workers {results['workers']} F")
    L.append("tshark -r CUT -d tcp.port==104,dicom -d tcp.port==11112,dicom -T fields -e dicom.pdu.type > out")
    L.append("python3 -m probe analyze -q --format prom CUT")
    L.append("```\n")
    L.append(f"tshark printed a DICOM PDU type for {M['tshark_cut']['frames_with_dicom_pdus']:,} frames of the cut "
             f"(so it did dissect DICOM).\n")
    L.append("### Targets (issue \"Performance\")\n")
    L.append(_md_table(("ratio", "measured", "target", "verdict"), target_rows(results), align="lrrl"))
    L.append("")
    rows = target_rows(results)
    met = [t for t in rows if t[3] == "met"]
    unsure = [t for t in rows if t[3].startswith("inconclusive")]
    L.append(f"{len(met)} of 3 targets met" + (f", {len(unsure)} inconclusive because of other load on the "
                                               f"machine" if unsure else "") + ".\n")
    L.extend(_why_not_met(results))
    lean = M.get("probe_1_lean")
    if lean:
        chk = results["check"]
        L.append(f"With `--drop-pure-acks` (`capture.drop_pure_acks`, off by default; README \"Capture at high "
                 f"rates\"), BPF drops the segments carrying only an ACK before the probe sees them: it decoded "
                 f"{chk['drop_pure_acks_frames_decoded']:,} of the {results['capture']['dicom_frames']:,} DICOM frames, "
                 f"counts {'exact' if chk['drop_pure_acks']['ok'] else 'NOT exact'}, at "
                 f"{lean['fps'] / M['tcpdump']['fps']:.3g}x the tcpdump frame rate (all frames of the file "
                 f"counted, as above).\n")
    sb = results.get("shard_balance")
    if sb:
        text = (f"The {results['workers']} workers split the connections by a hash of addresses and ports (the "
                f"daemon's BPF shard clause): on this capture the busiest worker gets "
                f"{100 * sb['max_share']:.0f}% of the DICOM frames ({', '.join(f'{x:,}' for x in sb['frames'])}), "
                f"a few large C-STORE connections carrying most of them (the compiled lane makes their frames "
                f"cheap).")
        cost = results.get("paths", {}).get("packet_seconds_by_worker_shard", {}).get(str(results["workers"]))
        if cost:
            text += (f" Frames do not cost the same, though: weighted by the time the probe took for each "
                     f"frame (bench/paths.py), the busiest worker has {100 * max(cost) / sum(cost):.0f}% of the "
                     f"work, which caps the speed-up at {sum(cost) / max(cost):.2f}x before start-up, every "
                     f"worker reading and filtering the whole file, and merging.")
        L.append(text + "\n")
    fm = results.get("flow_memory")
    if fm:
        L.append("### Memory per tracked flow\n")
        L.append(f"Measured with tracemalloc over {fm['flows']:,} connections in the benchmark's process "
                 "(`bench/run.py`, `flow_memory()`): everything the flow table allocates for each.\n")
        L.append(_md_table(("connection", "bytes", "target"), [
            ("seen only in its handshake (SYN, SYN-ACK; an idle or flooding connection)", f"{fm['handshake']:,}",
             "<= 1 KiB: met" if fm["handshake"] <= 1024 else "<= 1 KiB: NOT met"),
            ("with an A-ASSOCIATE-RQ (connection, streams, framer, association, DIMSE tracker)",
             f"{fm['association']:,}", "-"),
        ], align="lrl"))
        L.append("")
    st = results.get("storm")
    if st:
        import storm
        L.append("### Reject storm (associations per second)\n")
        L.append(f"The founding incident: modalities an unprepared PACS rejects, retrying. `python3 bench/storm.py` "
                 f"(run by this benchmark) builds {st['associations']:,} copies of a real pynetdicom A-ASSOCIATE-RQ -> "
                 f"A-ASSOCIATE-RJ (calling-ae-title-not-recognized) association from the committed fixture, each its "
                 f"own TCP connection of 10 frames, from {st['clients']} client addresses, {st['rate']:,.0f} "
                 f"starting per second of capture time (`{st['capture']}`). Most of its frames take the Python path "
                 f"(handshake, control PDUs, closing; only ACKs of open connections take the compiled lane), so "
                 f"this measures the per-association cost. Median of "
                 f"{len(st['one_worker']['walls'])} runs, start-up included:\n")
        L.append(_md_table(("measurement", "wall s", "associations/s", "frames/s", "counts"), [
            (f"`{m['cmd']}`", f"{m['wall']:.2f}", f"{m['associations_per_s']:,.0f}", f"{m['frames_per_s']:,.0f}",
             "exact" if m["exact"] else f"WRONG {m['counts']}")
            for m in (st["one_worker"], st["two_workers"])], align="lrrrl"))
        L.append("")
    L.append("### Correctness\n")
    one, n = chk["one_worker"], chk["n_workers"]
    if chk["ok"]:
        L.append(f"The probe's counts are exact: for all {one['pairs']} AE pairs the A-ASSOCIATE-RQs, accepts, rejects "
                 f"(by result/source/reason), releases, aborts (by sender/source/reason/phase), DIMSE requests, "
                 f"responses by status class and unanswered requests equal the generator's truth "
                 f"({one['values_checked']:,} values), `dicom_probe_packets_total`/`bytes_total` equal the frames "
                 f"and bytes on ports 104/11112, and there are no gaps, resyncs, PDU errors or protocol violations. "
                 f"The {results['workers']}-worker run gives the same counts"
                 + (" and byte-identical output." if chk["n_workers_identical_text"] else
                    " (its exposition text differs only in ordering or worker-related families).") + "\n")
    else:
        L.append("**The probe's counts do NOT match the truth.** First differences:\n")
        L.append("```")
        for p in (one["problems"] + n["problems"])[:30]:
            L.append(p)
        if not chk["n_workers_same_counts"]:
            L.append(f"(the {results['workers']}-worker run counts differently from the 1-worker run)")
        L.append("```\n")
    if "paths" in results or "profile" in results:
        L.append("## Where the time goes\n")
    if "paths" in results:
        pr = results["paths"]
        n = pr["frames_after_filter"]
        L.append("### Per-packet paths (unprofiled)\n")
        if pr.get("mode") == "lane":
            L.append("`python3 bench/paths.py F` feeds the whole capture through the probe's own FileSource and "
                     "Pipeline in one process, as `analyze` does: libpcap calls the compiled lane for every frame. "
                     "Every frame the lane hands to the Python full path (`Pipeline._full`/`_full_seg`) is timed (no "
                     "profiler) and classed by the reason, found on the flow table's state just before the call; "
                     "the command values the lane frames itself go to `Pipeline._commands` (DIMSE and metrics in "
                     "Python), timed too. The lane's own time is the rest: the loop minus those calls, the "
                     "classification and the dispatch floor below; an upper bound, since the rest also holds "
                     "the script's own timing wrappers (the lane is never timed frame by frame). "
                     "`python3 bench/paths.py --pure F` measures the pure-Python path the same way.\n")
            L.append(f"- {n:,} frames pass the BPF filter (other processes used {_cpus(pr.get('other_cpus'))} "
                     f"during this run); the probe takes {pr['packet_calls_s']:.2f} s in all beyond the dispatch "
                     f"floor ({1e6 * pr['packet_calls_s'] / n:.2f} us per frame).")
            L.append(f"- The compiled lane finishes {pr['fast_frames']:,} frames ({100 * pr['fast_frames'] / n:.1f}%) "
                     f"in {pr['fast_seconds']:.2f} s, of which {pr.get('commands_seconds', 0):.2f} s is Python "
                     f"handling the {pr.get('commands_values', 0):,} command values it framed; the other "
                     f"{n - pr['fast_frames']:,} frames ({100 * (n - pr['fast_frames']) / n:.1f}%) take the Python "
                     f"full path: {pr['packet_calls_s'] - pr['fast_seconds']:.2f} s.")
        else:
            L.append("`python3 bench/paths.py F` feeds the whole capture through the probe's own FileSource and "
                     "Pipeline in one process and times every `Pipeline.packet` call (no profiler). A frame took the "
                     "fast lane when `Decoder.decode` never ran for it; for the others the reason is found by "
                     "re-checking the fast lane's conditions on the state just before the call.\n")
            L.append(f"- {n:,} frames pass the BPF filter (other processes used {_cpus(pr.get('other_cpus'))} "
                     f"during this run); `Pipeline.packet` takes {pr['packet_calls_s']:.2f} s in all "
                     f"({1e6 * pr['packet_calls_s'] / n:.2f} us per frame).")
            L.append(f"- The fast lane takes {pr['fast_frames']:,} frames ({100 * pr['fast_frames'] / n:.1f}%) and "
                     f"{pr['fast_seconds']:.2f} s ({100 * pr['fast_seconds'] / pr['packet_calls_s']:.0f}% of the time); "
                     f"the other {n - pr['fast_frames']:,} frames ({100 * (n - pr['fast_frames']) / n:.1f}%) take "
                     f"{pr['packet_calls_s'] - pr['fast_seconds']:.2f} s.")
        L.append(f"- Floor of any once-per-packet Python design: libpcap's dispatch with the same filter into a "
                 f"no-op Python callback reads the capture in {pr['floor_dispatch_noop_s']:.2f} s "
                 f"({pr['floor_dispatch_noop_fps']:,.0f} frames/s), against "
                 f"{M['tcpdump']['fps']:,.0f} frames/s for tcpdump.\n")
        L.append(_md_table(("frames", "share", "seconds", "time share", "us/frame", "path"),
                           [(f"{c['frames']:,}", f"{100 * c['frames'] / n:.1f}%", f"{c['seconds']:.2f}",
                             f"{100 * c['seconds'] / pr['packet_calls_s']:.1f}%", f"{c['us_per_frame']:.1f}", c["class"])
                            for c in pr["classes"]], align="rrrrrl"))
        L.append("")
    pf = results.get("perf")
    if pf:
        L.append("### CPU by binary (perf)\n")
        L.append(f"`{pf['cmd']}`, then `perf report --sort dso`: where the 1-worker run's CPU samples fall "
                 f"({pf['samples'] or '?'} samples), whole process, start-up included.\n")
        rows = []
        for name, pct in pf["shares"]:
            if pct < 0.5:
                continue
            what = next((w for key, w in PERF_BINARIES if key in name), "")
            rows.append((f"`{name}`", f"{pct:.1f}%", what))
        L.append(_md_table(("binary", "samples", "what runs there"), rows, align="lrl"))
        L.append("")
    if "profile" in results:
        p = results["profile"]
        L.append("### Profile by stage\n")
        L.append(f"cProfile of one 1-worker run over the first {p['frames']:,} frames "
                 f"(`python3 -m cProfile -m probe analyze -q --format prom CUT200K`): {p['wall_plain']:.2f} s without "
                 f"the profiler, {p['wall_profiled']:.2f} s with it (other processes: {_cpus(p.get('other_cpus'))}). Self time per stage; time in built-in (C) functions "
                 f"such as `struct.unpack_from`, `dict.get` or libpcap's `dispatch` is charged to the stage that called "
                 f"them. cProfile adds a fixed cost to every Python call, so stages made of many small calls look "
                 f"bigger than they are; read the shares as an ordering, not as exact fractions.\n")
        rows = []
        for s in STAGE_ORDER:
            v = p["stages"].get(s, 0.0)
            rows.append((s, f"{v:.2f}", f"{100 * v / p['total']:.1f}%", STAGE_NOTES[s]))
        L.append(_md_table(("stage", "self s", "share", "what"), rows, align="lrrl"))
        L.append("")
        L.append("Top functions by self time, grouped by stage (a stage in parentheses: a function outside probe/ "
                 "charged to the stage of its callers):\n")
        rows = []
        for s in STAGE_ORDER:
            for f in [f for f in p["top"] if f["stage"].strip("()") == s][:5]:
                rows.append((f["stage"], f"{f['tottime']:.2f}", f"{f['calls']:,}", f"`{f['func']}`"))
        L.append(_md_table(("stage", "self s", "calls", "function"), rows, align="lrrl"))
        L.append("")
    L.extend(live_section())
    L.append("## Reproduce\n")
    L.append("```")
    L.append("python3 bench/run.py                # measure and print (capture generated once, then cached)")
    L.append("python3 bench/run.py --write        # ... and rewrite this file")
    L.append("python3 bench/run.py --render-only  # rewrite this file from the last run's saved results")
    L.append("python3 bench/run.py --frames 200000 --repeat 1 --keep   # quicker; keep cuts, outputs, profile")
    L.append("python3 bench/make_capture.py --frames N --out FILE      # just the capture (+ FILE.truth.json)")
    L.append("python3 bench/storm.py                # the reject storm alone (associations/s)")
    L.append("python3 bench/live.py [--soak] [--drop-pure-acks] ...     # live capture (root; see above)")
    L.append("```")
    L.append("")
    L.append("The CPU-by-binary section needs `perf` (Debian: linux-perf); without it that section is left out "
             "(`--no-perf` skips it too).")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
