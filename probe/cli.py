"""Command line: ``dicom-probe analyze`` (offline captures) and ``dicom-probe check-config``."""

from __future__ import annotations

import argparse
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
from .report import ResponseTimes, association_json, render_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-probe", description="Passive DICOM network monitor.")
    p.add_argument("--version", action="version", version=f"dicom-probe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="decode pcap/pcapng captures and report per AE pair")
    a.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files (merged by time)")
    a.add_argument("--config", help="YAML configuration (ports, limits, label policy)")
    a.add_argument("--port", type=int, action="append", default=[], help="another DICOM server port (repeatable)")
    a.add_argument("--format", choices=("table", "json", "prom"), default="table")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    return _analyze(args)


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

    def update(self, pipe: Pipeline, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next and not force:
            return
        self.next = now + 0.5
        elapsed = max(now - self.start, 1e-6)
        frac = min(self.file_bytes / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0
        sys.stderr.write(f"\r{pipe.packets} frames  {pipe.bytes / 1e6:.1f} MB  {pipe.associations} associations  "
                         f"{pipe.packets / elapsed:,.0f} frames/s  {100 * frac:.0f}%  ETA {eta:.0f}s ")
        sys.stderr.flush()

    def tick(self, pipe: Pipeline) -> None:
        self.file_bytes = pipe.bytes + 16 * pipe.packets  # pcap record headers are 16 bytes
        self.update(pipe)

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _analyze(args) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    bad_ports = [p for p in args.port if not 1 <= p <= 65535]
    if bad_ports:
        print(f"dicom-probe: --port {bad_ports[0]}: not a TCP port (1-65535)", file=sys.stderr)
        return 2
    ports = sorted(set(cfg.ports) | set(args.port))
    try:
        sources = open_sources(args.captures, ports)
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
    on_association = (lambda a: out.write(association_json(a) + "\n")) if args.format == "json" else times.add
    progress = _Progress(sum(s.size for s in sources), sys.stderr.isatty() and not args.quiet)
    try:
        pipe = run(sources, cfg, args.port, on_association, progress.tick, labeler)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    progress.file_bytes = progress.total
    progress.update(pipe, force=True)
    progress.done()

    try:
        if args.format == "table":
            out.write(render_table(pipe.store, times))
        elif args.format == "prom":
            out.write(pipe.store.render().decode())
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    errors = [s.error for s in sources if s.error]
    for e in errors:
        print(f"dicom-probe: {e}; results above cover the frames read before it", file=sys.stderr)
    return 1 if errors else 0
