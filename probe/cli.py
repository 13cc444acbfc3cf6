"""Command line: ``dicom-probe analyze`` (offline captures) and ``dicom-probe check-config``."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from . import __version__
from .capture import CaptureError
from .config import ConfigError, load
from .decode import Decoder
from .offline import open_sources, run
from .pipeline import Pipeline
from .metrics import AeLabeler
from .report import ResponseTimes, association_json, association_record, record_json, render_table, tls_record
from .sites import SiteMap


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-probe", description="Passive DICOM network monitor.")
    p.add_argument("--version", action="version", version=f"dicom-probe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="decode pcap/pcapng captures and report per AE pair")
    a.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files (merged by time)")
    a.add_argument("--config", help="YAML configuration (ports, limits, label policy)")
    a.add_argument("--port", type=int, action="append", default=[], help="another DICOM server port (repeatable)")
    a.add_argument("--tls-port", type=int, action="append", default=[],
                   help="another DICOM-over-TLS server port (repeatable; config tls_ports has 2762)")
    a.add_argument("--format", choices=("table", "json", "prom", "html"), default="table",
                   help="table (default), json (one record per association), prom (the exposition), "
                        "html (a self-contained incident report)")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    a.add_argument("--drop-pure-acks", action="store_true",
                   help="filter out segments carrying only an ACK before decoding (as capture.drop_pure_acks)")

    a.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing the connections (default 1; counts never depend on it)")

    r = sub.add_parser("run", help="the always-on probe: live capture, /metrics, event log")
    r.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    r.add_argument("--read", nargs="+", metavar="CAPTURE", help="replay capture files instead of capturing live")
    r.add_argument("--realtime", action="store_true", help="with --read: replay at the recorded pace")
    r.add_argument("--workers", type=int, help="override the configured worker count")
    r.add_argument("--listen", help="override http.listen (HOST:PORT)")
    r.add_argument("--exit-when-done", action="store_true", help="with --read: exit once the files are read")

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("file")
    return p


# The collector's young generation runs every 10,000 net container allocations instead of 700. The
# per-packet path makes many short-lived containers that reference counting frees anyway (no
# reference cycle is made per connection or association), while every older-generation pass walks
# the whole flow table: a 50,000-association reject storm (bench/storm.py) ran 7 % faster. Workers
# inherit it (fork). RSS stayed flat over the 10-minute soak (BENCHMARKS.md).
GC_THRESHOLDS = (10_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "run":
        return _run(args)
    return _analyze(args)


def _run(args) -> int:
    from .service import Service

    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.workers is not None and not 1 <= args.workers <= 256:
        print("dicom-probe: --workers must be from 1 to 256", file=sys.stderr)
        return 2
    if args.listen:
        from .http import parse_listen

        try:
            parse_listen(args.listen)
        except ValueError as e:
            print(f"dicom-probe: --listen: {e}", file=sys.stderr)
            return 2
    if args.read:
        try:
            open_sources(args.read, cfg.capture_ports(), **cfg.filter_options)  # fail early with a clear message
        except CaptureError as e:
            print(f"dicom-probe: {e}", file=sys.stderr)
            return 1
    return Service(cfg, args.config, read=args.read or (), realtime=args.realtime, workers=args.workers,
                   listen=args.listen, exit_when_done=args.exit_when_done).run()


def _check_config(args) -> int:
    try:
        load(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


class _Progress:
    """Frames, bytes, associations, rate and ETA on stderr, when stderr is a terminal."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.total = max(total_bytes, 1)
        self.enabled = enabled
        self.start = time.monotonic()
        self.next = self.start + 0.5
        self.file_bytes = 0

    def update(self, packets: int, nbytes: int, associations: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next and not force:
            return
        self.next = now + 0.5
        elapsed = max(now - self.start, 1e-6)
        frac = min(self.file_bytes / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0
        sys.stderr.write(f"\r{packets} frames  {nbytes / 1e6:.1f} MB  {associations} associations  "
                         f"{packets / elapsed:,.0f} frames/s  {100 * frac:.0f}%  ETA {eta:.0f}s ")
        sys.stderr.flush()

    def tick(self, pipe: Pipeline) -> None:
        self.file_bytes = pipe.bytes + 16 * pipe.packets  # pcap record headers are 16 bytes
        self.update(pipe.packets, pipe.bytes, pipe.associations)

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _analyze_workers(args, cfg, on_association, progress):
    """``analyze --workers N``: the daemon's workers and supervisor over the files, then one merge."""
    from .daemon import Supervisor

    sup = Supervisor(cfg, read=args.captures, workers=args.workers, extra_ports=args.port,
                     records={"json": "json", "html": "both"}.get(args.format, "times"))
    sup.start()
    try:
        while not sup.all_done:
            sup.poll(0.2, restart=False)
            for rec in sup.records:
                on_association(rec)
            sup.records = []
            store = sup.merged()
            packets = store.total("dicom_probe_packets_total")
            nbytes = store.total("dicom_probe_bytes_total")
            progress.file_bytes = nbytes + 16 * packets
            progress.update(int(packets), int(nbytes), int(store.total("dicom_association_requests_total")))
    finally:
        sup.stop(timeout=2)
    for rec in sup.records:
        on_association(rec)
    store = sup.offline_result()
    progress.file_bytes = progress.total
    progress.update(int(store.total("dicom_probe_packets_total")), int(store.total("dicom_probe_bytes_total")),
                    int(store.total("dicom_association_requests_total")), force=True)
    return store, sup.errors, sup.times


def _analyze(args) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    for opt, given in (("--port", args.port), ("--tls-port", args.tls_port)):
        bad_ports = [p for p in given if not 1 <= p <= 65535]
        if bad_ports:
            print(f"dicom-probe: {opt} {bad_ports[0]}: not a TCP port (1-65535)", file=sys.stderr)
            return 2
    cfg = cfg.with_tls_ports(args.tls_port)
    if args.drop_pure_acks:
        cfg = cfg.with_pure_acks_dropped()
    ports = cfg.capture_ports(args.port)
    try:
        sources = open_sources(args.captures, ports, **cfg.filter_options)
    except CaptureError as e:
        print(f"dicom-probe: {e}", file=sys.stderr)
        return 1
    for s in sources:
        if not Decoder.supports(s.linktype):
            print(f"dicom-probe: {s.path}: link type {s.linktype} not supported; its frames are counted as skipped",
                  file=sys.stderr)

    out = sys.stdout
    labeler = AeLabeler(cfg.max_ae_titles, cfg.ae_aliases)
    times = ResponseTimes(labeler)
    records: list[dict] = []
    sites = SiteMap(cfg.sites)
    on_tls = None
    if args.format == "json":
        def on_association(a):
            out.write(association_json(a) + "\n")

        def on_tls(r):
            out.write(record_json(tls_record(r, sites)) + "\n")
    elif args.format == "html":
        def on_association(a):
            times.add(a)
            records.append(association_record(a))

        def on_tls(r):
            records.append(tls_record(r, sites))
    else:
        on_association = times.add
    progress = _Progress(sum(s.size for s in sources), sys.stderr.isatty() and not args.quiet)
    if not 1 <= args.workers <= 256:
        print("dicom-probe: --workers must be from 1 to 256", file=sys.stderr)
        return 2
    try:
        if args.workers == 1:
            pipe = run(sources, cfg, args.port, on_association, progress.tick, labeler, on_tls)
            store = pipe.store
            progress.file_bytes = progress.total
            progress.update(pipe.packets, pipe.bytes, pipe.associations, force=True)
        else:
            if args.format == "json":
                def take(rec):
                    out.write(record_json(rec) + "\n")
            elif args.format == "html":
                take = records.append
            else:
                take = None
            store, errors, worker_times = _analyze_workers(args, cfg, take, progress)
            times.merge(worker_times)
            for s, e in zip(sources, errors):
                s.error = s.error or e
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    progress.done()

    try:
        if args.format == "table":
            out.write(render_table(store, times))
        elif args.format == "prom":
            out.write(store.render().decode())
        elif args.format == "html":
            from .statuspage import render_report  # only this format needs it

            records.sort(key=lambda r: r.get("start") or 0)
            out.write(render_report(store, records, title="dicom-probe incident report", sources=args.captures,
                                    times=times).decode())
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    errors = [s.error for s in sources if s.error]
    for e in errors:
        print(f"dicom-probe: {e}; results above cover the frames read before it", file=sys.stderr)
    return 1 if errors else 0
