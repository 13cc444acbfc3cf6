"""Capture workers and their supervisor: the multi-process flow table.

Each worker process owns a disjoint, direction-symmetric share of the connections, chosen by the
kernel, never by per-packet IPC:

- live capture: every worker opens its own libpcap handle per interface and joins one AF_PACKET
  fanout group per interface with ``PACKET_FANOUT_HASH`` (the kernel's symmetric flow hash, so both
  directions of a connection reach the same worker);
- a capture file: every worker reads the file with a BPF shard clause (:func:`shard_filter`), the sum
  of both addresses and both ports modulo the worker count — symmetric because addition commutes.

Workers run the ordinary :class:`~probe.pipeline.Pipeline` and send a *cumulative* snapshot of their
metric store about once a second (plus finished association records). The supervisor keeps the
latest snapshot of each worker; the exposition is their sum plus the counters of workers that died
(so totals never go backwards when a worker is restarted), with the AE-title cap applied over all
workers. Nothing here is on the per-packet path except the worker's capture loop.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial

import pcap

from . import __version__, privileges
from .capture import CaptureError, FileSource, build_filter, merged
from .config import Config
from .decode import DLT_EN10MB
from .metrics import AE_EMPTY, AE_NOT_SEEN, AE_OVERFLOW, FAMILIES, AeLabeler, MetricStore
from .pipeline import Pipeline
from .report import ResponseTimes, association_record, tls_record
from .sites import SiteMap

SNAPSHOT_INTERVAL = 1.0
SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # Linux >= 4.8: the kernel picks a group id no one uses

# Families the supervisor owns (a sum over workers would be wrong or meaningless). Those in
# DAEMON_ONLY describe the running daemon and are left out of an offline analysis.
PARENT_FAMILIES = frozenset((
    "dicom_probe_build_info", "dicom_probe_worker_restarts_total", "dicom_probe_workers_alive",
    "dicom_probe_worker_lag_seconds", "dicom_probe_last_packet_age_seconds", "dicom_probe_new_ae_titles_total",
    "dicom_ae_title_first_seen_timestamp_seconds", "dicom_probe_ae_title_overflow_total",
    "dicom_probe_start_time_seconds", "dicom_probe_capture_reopens_total", "dicom_probe_event_log_errors_total",
))
DAEMON_ONLY = PARENT_FAMILIES - {"dicom_probe_build_info", "dicom_probe_ae_title_overflow_total"}
AE_LABELS = ("calling_ae", "called_ae")
_FIXED_TITLES = (AE_NOT_SEEN, AE_EMPTY, AE_OVERFLOW)


def shard_filter(count: int, index: int) -> str | None:
    """BPF selecting worker ``index`` of ``count``'s share of TCP connections in a capture file.

    libpcap's ``tcp[...]`` offsets only follow IPv4, so IPv6 uses fixed offsets for a TCP header right
    after the IPv6 header; IPv6 frames with extension headers all go to worker 0, so that every frame
    is read by exactly one worker. :func:`probe.capture.build_filter` repeats it per VLAN depth.
    """
    if count <= 1:
        return None
    v4 = f"(ip and ((ip[12:4] + ip[16:4] + tcp[0:2] + tcp[2:2]) % {count} = {index}))"
    v6_words = " + ".join(f"ip6[{o}:4]" for o in range(8, 40, 4))
    v6 = f"(ip6 and ip6[6] = 6 and (({v6_words} + ip6[40:2] + ip6[42:2]) % {count} = {index}))"
    clause = f"{v4} or {v6}"
    if index == 0:
        clause += " or (ip6 and ip6[6] != 6)"
    return clause


# -- the worker process ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    count: int
    read: tuple[str, ...] = ()  # capture files to replay (merged by time) instead of live interfaces
    realtime: bool = False  # replay at the recorded pace
    fanout: tuple[int, ...] | None = None  # live, several workers: the group id per interface
    # (None: this worker creates the groups with kernel-chosen ids and reports them)
    extra_ports: tuple[int, ...] = ()
    records: str | None = "json"  # "json": association records; "times": a response-time tally; "both"
    retry_open: bool = False  # respawned after losing its capture: wait for the interface to come back


def _join_fanout(handle, group: int | None) -> tuple[socket.socket, int]:
    """Join (or, with ``group`` None, create with a kernel-chosen id) the AF_PACKET fanout group.

    A unique id matters: two probes in one network namespace (containers on the host network
    share PIDs, so no id derived from them is safe) would otherwise split each other's traffic.
    """
    sock = socket.socket(fileno=os.dup(handle.fileno()))  # pypcap's int fd is not a socket object
    mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
    if group is None:
        mode |= PACKET_FANOUT_FLAG_UNIQUEID
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", ((group or 0) & 0xFFFF) | (mode << 16)))
    assigned = struct.unpack("I", sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
    return sock, assigned


def open_live(interface: str, cfg: Config, ports, fanout: bool, fanout_group: int | None):
    """A non-blocking libpcap handle on ``interface`` with the DICOM filter, in a fanout group if
    ``fanout`` (``fanout_group`` None: a new group with a kernel-chosen id). Returns the handle,
    the fanout socket to keep, and the group id."""
    cap = cfg.raw["capture"]
    try:
        handle = pcap.pcap(name=interface, snaplen=cap["snaplen"], promisc=cap["promiscuous"], timeout_ms=100,
                           immediate=True, buffer_size=cap["buffer_mib"] << 20)
    except OSError as e:
        raise CaptureError(f"interface {interface}: cannot capture: {e}") from None
    bpf = build_filter(ports, vlan=handle.datalink() == DLT_EN10MB, **cfg.filter_options)
    try:
        handle.setfilter(bpf)
    except OSError as e:
        raise CaptureError(f"interface {interface}: bad capture filter: {e}") from None
    handle.setnonblock(True)
    if not fanout:
        return handle, None, None
    try:
        sock, group = _join_fanout(handle, fanout_group)
    except OSError as e:
        raise CaptureError(f"interface {interface}: cannot join AF_PACKET fanout group: {e}") from None
    return handle, sock, group


class _Worker:
    def __init__(self, plan: WorkerPlan, cfg: Config, conn):
        self.plan = plan
        self.cfg = cfg
        self.conn = conn
        self.stop = False
        self.records: list[dict] = []
        self.labeler = AeLabeler(cfg.max_ae_titles, cfg.ae_aliases)
        self.sites = SiteMap(cfg.sites)
        self.times = ResponseTimes(self.labeler)
        on_association = {"json": self._record, "times": self.times.add, "both": self._record_and_time}.get(plan.records)
        self.pipe = Pipeline(cfg.flow_settings(plan.extra_ports), self.labeler, on_association,
                             interface="offline" if plan.read else None, sites=self.sites)
        self.pipe.evidence = cfg.evidence_writer()
        if plan.records in ("json", "both"):
            self.pipe.on_tls = self._tls_record
        self.ports = cfg.capture_ports(plan.extra_ports)
        self.handles: list = []  # live: (name, handle, fanout socket, decoder)
        self.last_packet_wall = 0.0
        self.done = False
        self.error: str | None = None

    def _record(self, a) -> None:
        self.records.append(association_record(a))

    def _tls_record(self, r) -> None:
        self.records.append(tls_record(r, self.sites))

    def _record_and_time(self, a) -> None:
        self.records.append(association_record(a))
        self.times.add(a)

    # -- messages ------------------------------------------------------------------------------

    def snapshot(self, final: bool = False) -> dict:
        self.pipe.sync()
        stats = {}
        for name, handle, _sock, _dec in self.handles:
            try:
                recv, drop, ifdrop = handle.stats()
            except OSError:
                continue
            acc = stats.setdefault(name, [0, 0])
            acc[0] += drop
            acc[1] += ifdrop
        store = self.pipe.store
        for name, (drop, ifdrop) in stats.items():
            store.set("dicom_probe_kernel_drops_total", (name,), drop)
            store.set("dicom_probe_interface_drops_total", (name,), ifdrop)
        records, self.records[:] = list(self.records), []
        return {
            "values": store.values,
            "records": records,
            "last_packet_wall": self.last_packet_wall,
            "last_packet_ts": self.pipe.last_ts,
            "handles": len(self.handles) if not self.plan.read else 1,
            "done": self.done,
            "final": final,
            "error": self.error,
            "times": self.times.times if final else {},
            "first_seen": dict(self.pipe.metrics.first_seen),
        }

    def _messages(self) -> None:
        while self.conn.poll():
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.stop = True
                return
            if msg[0] == "stop":
                self.stop = True
            elif msg[0] == "reload":
                cfg = Config(msg[1])
                self.labeler.aliases = cfg.ae_aliases
                self.labeler._cache.clear()  # labels made with the old aliases
                self.sites.__init__(cfg.sites)

    def _send(self, payload: dict, kind: str = "snapshot") -> None:
        try:
            self.conn.send((kind, payload))
        except (BrokenPipeError, OSError):
            self.stop = True  # the supervisor is gone

    # -- main loops ----------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            if self.plan.read:
                self._run_file()
            else:
                self._run_live()
        except CaptureError as e:
            self.error = str(e)
            self._send(self.snapshot(final=True), "error")
            return 2
        except _CaptureLost as e:
            snap = self.snapshot(final=True)
            snap["lost"] = e.interface
            snap["lost_reason"] = str(e)
            self._send(snap, "lost")
            return 3
        self._send(self.snapshot(final=True), "final")
        return 0

    def _run_file(self) -> None:
        plan = self.plan
        shard = partial(shard_filter, plan.count, plan.index)
        sources = [FileSource(path, self.ports, shard=shard, **self.cfg.filter_options) for path in plan.read]
        next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL

        def tick():
            nonlocal next_snapshot
            self.last_packet_wall = time.time()
            now = time.monotonic()
            if now >= next_snapshot:
                next_snapshot = now + SNAPSHOT_INTERVAL
                self._messages()
                self._send(self.snapshot())
            if self.stop:
                raise _Stop

        try:
            if len(sources) == 1:
                src = sources[0]
                packet = self.pipe.callback(self.pipe.decoder(src.linktype))
                if plan.realtime:
                    packet = _paced(packet, tick)
                src.dispatch_all(packet, tick, batch=256 if plan.realtime else None)
            else:
                callbacks = {id(s): self.pipe.callback(self.pipe.decoder(s.linktype)) for s in sources}
                pace = _Pacer(tick) if plan.realtime else None
                for count, (ts, frame, src) in enumerate(merged(sources), 1):
                    if pace is not None:
                        pace.wait(ts)
                    callbacks[id(src)](ts, frame)
                    if count & 0xFF == 0:
                        tick()
        except _Stop:
            return
        errors = [s.error for s in sources if s.error]
        if errors:
            raise CaptureError(errors[0])
        self.pipe.finish()
        self.done = True

    def _run_live(self) -> None:
        plan = self.plan
        groups = []
        for i, name in enumerate(self.cfg.raw["capture"]["interfaces"]):
            wanted = plan.fanout[i] if plan.fanout else None
            while True:
                try:
                    handle, sock, group = open_live(name, self.cfg, self.ports, plan.count > 1, wanted)
                    break
                except CaptureError:
                    if not plan.retry_open:
                        raise  # at start-up a missing interface is a configuration error
                    self._messages()  # e.g. the interface is still down: try again in a second
                    if self.stop:
                        return
                    time.sleep(1.0)
            groups.append(group)
            self.handles.append((name, handle, sock, self.pipe.decoder(handle.datalink())))
            self.pipe.count_interface(name, 0, 0)  # the series exist from the start
        run_as = self.cfg.raw["run_as"]
        try:  # from here on, untrusted packets are parsed with no capability
            privileges.drop_all(run_as["user"], run_as["group"])
        except (privileges.PrivilegeError, OSError) as e:
            raise CaptureError(f"run_as: {e}") from None
        self._send({"fanout": tuple(groups)}, "ready")
        pipe = self.pipe
        by_fd = {h.fileno(): (name, h, pipe.callback(dec)) for name, h, _s, dec in self.handles}
        next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
        while not self.stop:
            ready, _, _ = select.select(list(by_fd), [], [], 0.25)
            for fd in ready:
                name, handle, cb = by_fd[fd]
                before_p, before_b = pipe.packets, pipe.bytes
                try:
                    n = handle.dispatch(10000, cb)
                except OSError as e:
                    raise _CaptureLost(name, str(e)) from None
                if n < 0:
                    raise _CaptureLost(name, _text(handle.geterr()))
                if n:
                    self.last_packet_wall = time.time()
                    pipe.count_interface(name, pipe.packets - before_p, pipe.bytes - before_b)
            pipe.tick(time.time())  # idle timeouts keep running on a quiet link
            now = time.monotonic()
            if now >= next_snapshot:
                next_snapshot = now + SNAPSHOT_INTERVAL
                self._messages()
                self._send(self.snapshot())


class _Stop(Exception):
    pass


class _CaptureLost(Exception):
    """A live capture handle failed (interface down or gone): the supervisor respawns the worker,
    which holds no capability to reopen it itself."""

    def __init__(self, interface: str, reason: str):
        super().__init__(f"interface {interface}: {reason}")
        self.interface = interface


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class _Pacer:
    """Replays at the recorded pace: sleeps until a packet's time offset has passed on the clock,
    calling ``idle()`` (snapshots, messages) at least every ``step`` seconds while it waits."""

    def __init__(self, idle=None, step: float = 0.25):
        self._origin: tuple[float, float] | None = None
        self._idle = idle
        self._step = step

    def wait(self, ts: float) -> None:
        if self._origin is None:
            self._origin = (time.monotonic(), ts)
        wall0, ts0 = self._origin
        while True:
            delay = (ts - ts0) - (time.monotonic() - wall0)
            if delay <= 0:
                return
            time.sleep(min(delay, self._step))
            if self._idle is not None:
                self._idle()


def _paced(packet, idle=None):
    pacer = _Pacer(idle)

    def paced(ts, frame):
        pacer.wait(ts)
        packet(ts, frame)

    return paced


def worker_main(plan: WorkerPlan, raw_cfg: dict, conn) -> None:
    code = _Worker(plan, Config(raw_cfg), conn).run()
    conn.close()
    os._exit(code)


# -- the supervisor --------------------------------------------------------------------------------


@dataclass
class _Slot:
    plan: WorkerPlan
    process: multiprocessing.Process | None = None
    conn: object = None
    latest: dict | None = None
    finished: bool = False
    error: str | None = None
    started: float = 0.0
    failures: int = 0  # consecutive quick deaths, for the restart backoff
    ready: bool = False  # live: its capture handles are open
    respawn_at: float | None = None
    lost: bool = False  # its capture failed: respawn at once, waiting for the interface


@dataclass
class AeTitleRegistry:
    """AE titles seen so far (over all workers), in first-seen order, with the global cap."""

    cap: int
    known: frozenset
    order: dict = field(default_factory=dict)  # (title) -> first seen (unix time)
    roles: dict = field(default_factory=dict)  # (title, role) -> first seen
    folded: set = field(default_factory=set)


class Supervisor:
    """Starts and watches the workers, merges their snapshots, and renders the exposition."""

    def __init__(self, cfg: Config, *, read=(), realtime: bool = False, workers: int | None = None,
                 extra_ports=(), records: str | None = "json"):
        self.cfg = cfg
        read = tuple(read or ())
        self.read = read or None
        count = workers or cfg.workers
        self.slots = [_Slot(WorkerPlan(i, count, read, realtime, None, tuple(extra_ports), records))
                      for i in range(count)]
        self.fanout: tuple[int, ...] | None = None  # live: group ids, learnt from the first worker
        self._lock = threading.RLock()  # the HTTP threads render while the main thread polls
        self.retired = MetricStore()  # counters of workers that died
        self.restarts = 0
        self.records: list[dict] = []  # finished associations not yet written to the event log
        self.events: list[dict] = []  # new-AE-title events
        self.times: dict = {}  # workers' final response-time tallies (records="times")
        self.reopens: dict[str, int] = {}  # interface -> captures lost and reopened
        self.notes: list[str] = []  # messages for the service's log
        self.counters: dict[str, float] = {}  # supervisor-side counters (e.g. event log errors)
        self.titles = AeTitleRegistry(cfg.max_ae_titles, cfg.known_ae_titles)
        self._ctx = multiprocessing.get_context("fork")
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 15.0) -> None:
        """Start the workers. Live with several workers, the first creates the fanout groups and
        the others join the ids it reports."""
        first, rest = self.slots[0], self.slots[1:]
        self._spawn(first)
        if self.read is None and rest:
            deadline = time.monotonic() + ready_timeout
            while self.fanout is None and not first.finished and time.monotonic() < deadline:
                self.poll(0.1, restart=False)
            if self.fanout is None:
                return  # the first worker failed (its error is reported) or hangs: others would too
        for slot in rest:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        if self.fanout is not None:
            slot.plan = replace(slot.plan, fanout=self.fanout)
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, args=(slot.plan, self.cfg.raw, child),
                                 name=f"dicom-probe-worker-{slot.plan.index}", daemon=True)
        proc.start()
        child.close()
        slot.process, slot.conn, slot.started, slot.ready = proc, parent, time.monotonic(), False

    def stop(self, timeout: float = 5.0) -> None:
        """Ask every worker for its final snapshot, wait for them, then make sure they are gone."""
        for slot in self.slots:
            slot.respawn_at = None
            if slot.process is not None and slot.process.is_alive():
                try:
                    slot.conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.process is not None and s.process.is_alive() for s in self.slots):
            self.poll(0.1, restart=False)
        self.poll(0, restart=False)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1)

    def reload(self, cfg: Config) -> list[str]:
        """Apply what can change without losing counters; return the keys that need a restart."""
        with self._lock:
            return self._reload(cfg)

    def _reload(self, cfg: Config) -> list[str]:
        needs_restart = [k for k in ("ports", "tls_ports", "capture", "workers", "http", "flows", "limits")
                         if cfg.raw[k] != self.cfg.raw[k]]
        self.titles.known = cfg.known_ae_titles
        self.titles.cap = cfg.max_ae_titles
        for slot in self.slots:
            try:
                slot.conn.send(("reload", cfg.raw))
            except (BrokenPipeError, OSError, AttributeError):
                pass
        self.cfg = Config({**cfg.raw, **{k: self.cfg.raw[k] for k in needs_restart}})
        return needs_restart

    @property
    def all_done(self) -> bool:
        return all(s.finished for s in self.slots)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.slots if s.error]

    # -- receiving snapshots --------------------------------------------------------------------

    def poll(self, timeout: float, restart: bool = True) -> None:
        conns = {s.conn: s for s in self.slots if s.conn is not None}
        ready = multiprocessing.connection.wait(list(conns), timeout) if conns else time.sleep(timeout) or []
        with self._lock:
            self._poll(conns, ready, restart)

    def _poll(self, conns: dict, ready: list, restart: bool) -> None:
        for conn in ready:
            slot = conns[conn]
            try:
                while conn.poll():
                    kind, payload = conn.recv()
                    self._receive(slot, kind, payload)
            except (EOFError, OSError):
                self._reap(slot, restart)
        now = time.monotonic()
        for slot in self.slots:
            if slot.respawn_at is not None and now >= slot.respawn_at:
                slot.respawn_at = None
                if not slot.plan.retry_open:
                    self.restarts += 1  # a lost capture is counted as a reopen instead
                self._spawn(slot)
        for slot in self.slots:
            if slot.process is not None and not slot.process.is_alive() and slot.conn is not None:
                try:
                    while slot.conn.poll():
                        kind, payload = slot.conn.recv()
                        self._receive(slot, kind, payload)
                except (EOFError, OSError):
                    pass
                self._reap(slot, restart)

    def _receive(self, slot: _Slot, kind: str, payload: dict) -> None:
        if kind == "ready":
            slot.ready = True
            if self.fanout is None and all(g is not None for g in payload["fanout"]):
                self.fanout = payload["fanout"]
            return
        slot.latest = payload
        self._note_titles(payload.get("first_seen", {}))
        self.records.extend(payload.get("records", ()))
        for key, values in payload.get("times", {}).items():
            self.times.setdefault(key, []).extend(values)
        if kind == "lost":
            iface = payload["lost"]
            self.reopens[iface] = self.reopens.get(iface, 0) + 1
            self.notes.append(f"worker {slot.plan.index}: {payload['lost_reason']}; reopening")
            slot.lost = True
        if kind in ("final", "error"):
            slot.finished = True
        if kind == "error":
            slot.error = payload.get("error")

    def _reap(self, slot: _Slot, restart: bool) -> None:
        """A worker exited. Keep its counters; restart it if it died while capturing live."""
        if slot.conn is None:
            return
        slot.process.join(0.1)
        slot.conn.close()
        slot.conn = None
        if slot.finished:
            return  # a normal exit: its final snapshot stays in the totals
        if slot.latest is not None:
            # Its counters stay in the totals; its gauges describe nothing any more.
            self.retired.merge_values(slot.latest["values"], counters_only=True)
            slot.latest = None
        if restart and self.read is None and slot.lost:
            slot.lost = False
            slot.plan = replace(slot.plan, retry_open=True)
            slot.respawn_at = time.monotonic()
        elif restart and self.read is None:
            # Back off when a worker keeps dying right after it starts (1, 2, 4 ... 60 s).
            quick = time.monotonic() - slot.started < 10.0
            slot.failures = slot.failures + 1 if quick else 0
            slot.respawn_at = time.monotonic() + (min(60.0, 2.0 ** (slot.failures - 1)) if slot.failures else 0.0)
        else:
            slot.finished = True
            slot.error = slot.error or f"worker {slot.plan.index} exited with code {slot.process.exitcode}"

    # -- the exposition -------------------------------------------------------------------------

    def merged(self) -> MetricStore:
        with self._lock:
            return self._merged()

    def _merged(self) -> MetricStore:
        store = MetricStore()
        store.merge(self.retired)
        alive = 0
        last_wall = 0.0
        now = time.time()
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                alive += 1
            snap = slot.latest
            if snap is None:
                continue
            store.merge_values(snap["values"], skip=PARENT_FAMILIES)
            last_wall = max(last_wall, snap["last_packet_wall"])
            if self.read is None and snap["last_packet_ts"]:
                store.set("dicom_probe_worker_lag_seconds", (str(slot.plan.index),),
                          max(0.0, snap["last_packet_wall"] - snap["last_packet_ts"]))
        store.set("dicom_probe_build_info", (__version__,), 1)
        store.set("dicom_probe_start_time_seconds", (), round(self.started_at, 3))
        store.set("dicom_probe_workers_alive", (), alive)
        store.set("dicom_probe_worker_restarts_total", (), self.restarts)
        for iface, n in self.reopens.items():
            store.set("dicom_probe_capture_reopens_total", (iface,), n)
        for name, v in self.counters.items():
            store.set(name, (), v)
        store.set("dicom_probe_last_packet_age_seconds", (), now - (last_wall or self.started_at))
        self._titles(store)
        return store

    def _note_titles(self, first_seen: dict) -> None:
        """Titles a worker reports with the packet time of the association that brought them."""
        reg = self.titles
        for (title, role), ts in sorted(first_seen.items(), key=lambda kv: kv[1]):
            if title in _FIXED_TITLES:
                continue
            if title not in reg.order:
                if len(reg.order) >= reg.cap:
                    reg.folded.add(title)
                    continue
                reg.order[title] = ts
            old = reg.roles.get((title, role))
            if old is None:
                # "known" is decided once, when the title first appears: a later reload of the
                # known list must not move a counter from one series to another.
                known = title in reg.known
                reg.roles[(title, role)] = (ts, known)
                self.events.append({"event": "new-ae-title", "time": round(ts, 3), "ae_title": title,
                                    "role": role, "known": known})
            elif ts < old[0]:
                reg.roles[(title, role)] = (ts, old[1])  # another worker saw it earlier

    def _titles(self, store: MetricStore) -> None:
        """First-seen times, new-title counts, and the global AE-title cap over all workers."""
        reg = self.titles
        for (title, role), (first, was_known) in reg.roles.items():
            known = "true" if was_known else "false"
            store.set("dicom_ae_title_first_seen_timestamp_seconds", (title, role, known), round(first, 3))
            store.inc("dicom_probe_new_ae_titles_total", (role, known))
        allowed = reg.order
        for fam in FAMILIES:  # a title no worker reported yet is over the cap or not yet noted
            idx = [fam.labels.index(r) for r in AE_LABELS if r in fam.labels]
            for labels in store.values[fam.name] if idx else ():
                for i in idx:
                    if labels[i] not in allowed and labels[i] not in _FIXED_TITLES:
                        reg.folded.add(labels[i])
        if reg.folded:
            _fold(store, reg.folded)
        overflow = sum(v for v in self._worker_overflow())
        store.set("dicom_probe_ae_title_overflow_total", (), overflow + len(reg.folded))

    def _worker_overflow(self):
        for snap in [s.latest for s in self.slots if s.latest] + [{"values": self.retired.values}]:
            yield snap["values"].get("dicom_probe_ae_title_overflow_total", {}).get((), 0)

    def render(self) -> bytes:
        return self.merged().render()

    def offline_result(self) -> MetricStore:
        """The merged store as ``analyze`` reports it: without the running daemon's own families."""
        store = self.merged()  # a fresh store: safe to change
        for name in DAEMON_ONLY:
            store.values[name] = {}
        return store

    def health(self) -> tuple[bool, dict]:
        with self._lock:
            return self._health()

    def _health(self) -> tuple[bool, dict]:
        alive = [s for s in self.slots if s.process is not None and s.process.is_alive()]
        handles = sum((s.latest or {}).get("handles", 0) for s in alive)
        expected = len(self.slots) * len(self.cfg.raw["capture"]["interfaces"])
        last = max([(s.latest or {}).get("last_packet_wall", 0.0) for s in self.slots] + [0.0])
        info = {
            "workers": len(self.slots),
            "workers_alive": len(alive),
            "capture_handles_open": handles,
            "last_packet_age_seconds": round(time.time() - last, 3) if last else None,
            "restarts": self.restarts,
            "errors": self.errors,
        }
        if self.read is not None:
            ok = not self.errors and (len(alive) == len(self.slots) or self.all_done)
        else:
            ok = not self.errors and len(alive) == len(self.slots) and handles >= expected
            info["capture_handles_expected"] = expected
        info["ok"] = ok
        return ok, info


def _fold(store: MetricStore, folded: set) -> None:
    """Re-label series whose AE title is beyond the global cap as (overflow), summing them."""
    for fam in FAMILIES:
        idx = [fam.labels.index(r) for r in AE_LABELS if r in fam.labels]
        if not idx or fam.name == "dicom_ae_title_first_seen_timestamp_seconds":
            continue
        series = store.values[fam.name]
        if not any(labels[i] in folded for labels in series for i in idx):
            continue
        new: dict = {}
        for labels, v in series.items():
            key = tuple(AE_OVERFLOW if (i in idx and val in folded) else val for i, val in enumerate(labels))
            if fam.kind == "histogram":
                h = new.get(key)
                new[key] = [list(v[0]), v[1]] if h is None else [[a + b for a, b in zip(h[0], v[0])], h[1] + v[1]]
            else:
                new[key] = new.get(key, 0) + v
        store.values[fam.name] = new
