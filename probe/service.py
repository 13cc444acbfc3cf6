"""``dicom-probe run``: the supervisor, the HTTP endpoint, the event log, signals and systemd.

SIGTERM/SIGINT stop capture, collect every worker's final snapshot, write the last association
records and exit 0. SIGHUP re-reads the configuration and applies what can change without losing
counters (AE aliases, sites, known AE titles, label cap, event log); keys that need a restart are
named in the log and left as they were.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque

from . import metrics, privileges, tlscert
from .config import Config, ConfigError, load
from .daemon import Supervisor
from .eventlog import EventLog
from .http import MetricsServer
from .privileges import PrivilegeError
from .sdnotify import Notifier
from .statuspage import render_status


def log(msg: str) -> None:
    print(f"dicom-probe: {msg}", file=sys.stderr, flush=True)


LATEST_MAX = 20_000  # AE pair x site entries remembered for the status page's "last seen"


class Service:
    def __init__(self, cfg: Config, config_path: str | None, *, read=(), realtime=False, workers=None,
                 listen=None, exit_when_done=False):
        self.cfg = cfg
        self.config_path = config_path
        self.listen = listen or cfg.raw["http"]["listen"]
        self.exit_when_done = exit_when_done
        self.supervisor = Supervisor(cfg, read=read, realtime=realtime, workers=workers)
        self.notifier = Notifier.from_env()
        self.events: EventLog | None = None
        self.http: MetricsServer | None = None
        self._stop = False
        self._reload = False
        self._log_failing = False
        self._recent: deque[dict] = deque(maxlen=50)  # the newest rejected/aborted associations
        self._recent_tls: deque[dict] = deque(maxlen=50)  # ... and failed TLS handshakes
        self._latest: dict[tuple, dict] = {}  # per AE pair and site: its newest association (last seen)
        self._recent_lock = threading.Lock()

    def _open_event_log(self, cfg: Config) -> EventLog:
        ev = cfg.raw["event_log"]
        return EventLog.open(ev["destination"], ev["max_bytes"], ev["backups"])

    def run(self) -> int:
        try:
            self.events = self._open_event_log(self.cfg)
        except OSError as e:
            log(f"event_log.destination: {e}")
            return 2
        # Imported now what is otherwise imported when first needed: rendering /metrics happens after
        # the privilege drop, and restarted workers are forked from the unprivileged supervisor.
        metrics.preload()
        if self.cfg.raw["evidence"]["directory"]:
            from . import evidence  # noqa: F401
        if self.cfg.tls_ports:
            tlscert.preload()  # before workers fork and drop privileges (site-packages may be unreadable then)
        self.supervisor.start()  # fork before any thread exists
        http_cfg = self.cfg.raw["http"]
        self.http = MetricsServer(self.listen, self.supervisor.render, self.supervisor.health, self._status_page,
                                  tls=http_cfg["tls"], basic_auth_users=http_cfg["basic_auth_users"], log=log)
        try:
            self.http.start()
        except OSError as e:
            log(str(e))
            self.supervisor.stop()
            return 2
        host, port = self.http.address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        run_as = self.cfg.raw["run_as"]
        if run_as["user"]:
            self._wait_for_capture()
            try:
                privileges.become(run_as["user"], run_as["group"])
            except (PrivilegeError, OSError) as e:
                log(f"run_as: {e}")
                self.supervisor.stop()
                self.http.stop()
                return 2
            log(f"running as {run_as['user']} with CAP_NET_RAW only")
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log(f"listening on {where}; {len(self.supervisor.slots)} worker(s); "
            + (f"replaying {', '.join(self.supervisor.read)}" if self.supervisor.read
               else f"capturing on {', '.join(self.cfg.raw['capture']['interfaces'])}"))
        self.notifier.ready(f"capturing with {len(self.supervisor.slots)} workers")
        watchdog = self.notifier.watchdog_interval()
        next_ping = time.monotonic()
        code = 0
        while not self._stop:
            self.supervisor.poll(0.5)
            self._flush_events()
            if watchdog and time.monotonic() >= next_ping:
                self.notifier.watchdog()
                next_ping = time.monotonic() + watchdog
            if self._reload:
                self._reload = False
                self._do_reload()
            sup = self.supervisor
            if sup.errors and all(s.finished for s in sup.slots if s.error) and len(sup.errors) == len(sup.slots):
                for e in sorted(set(sup.errors)):
                    log(e)
                code = 1
                break
            if sup.read and sup.all_done and self.exit_when_done:
                for e in sup.errors:
                    log(e)
                code = 1 if sup.errors else 0
                break
        self.notifier.stopping()
        self.supervisor.stop()
        self._flush_events()
        self.events.close()
        self.http.stop()
        store = self.supervisor.merged()
        log(f"stopped: {int(store.total('dicom_probe_packets_total'))} packets, "
            f"{int(store.total('dicom_association_requests_total'))} associations requested, "
            f"{int(store.total('dicom_association_rejects_total'))} rejected")
        return code

    def _wait_for_capture(self, timeout: float = 10.0) -> None:
        """Before giving up root, let the workers open their capture handles."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervisor.poll(0.1)
            if self.supervisor.read or all(s.ready or s.finished for s in self.supervisor.slots):
                return

    def _status_page(self) -> bytes:
        ok, health = self.supervisor.health()
        with self._recent_lock:
            recent = list(self._recent) + list(self._recent_tls)
            latest = list(self._latest.values())
        return render_status(self.supervisor.merged(), recent, health, now=time.time(), seen=latest)

    def _flush_events(self) -> None:
        sup = self.supervisor
        with self._recent_lock:  # for the status page
            for r in sup.records:
                if r.get("event") == "tls-connection":
                    if r.get("outcome") == "failed":
                        self._recent_tls.append(r)
                    continue
                if r.get("outcome") in ("rejected", "aborted"):
                    self._recent.append(r)
                key = (r.get("calling_ae"), r.get("called_ae"), r.get("site"))
                if key in self._latest or len(self._latest) < LATEST_MAX:
                    self._latest[key] = r
        batch = sup.events + sup.records
        sup.events, sup.records = [], []
        for note in sup.notes:
            log(note)
        sup.notes.clear()
        if batch:
            try:
                self.events.write(batch)
            except (OSError, TypeError, ValueError) as e:  # never let the log stop the probe
                name = "dicom_probe_event_log_errors_total"
                sup.counters[name] = sup.counters.get(name, 0) + 1
                if not self._log_failing:  # logged once per streak of failures, counted every time
                    log(f"event log: {e}; dropping records until it can be written again")
                self._log_failing = True
            else:
                if self._log_failing:
                    log("event log: writing again")
                self._log_failing = False

    def _on_stop(self, *_):
        self._stop = True

    def _on_hup(self, *_):
        self._reload = True

    def _do_reload(self) -> None:
        if self.config_path is None:
            log("SIGHUP: no configuration file to re-read")
            return
        try:
            cfg = load(self.config_path)
        except ConfigError as e:
            log(f"SIGHUP: configuration not reloaded:\n{e}")
            return
        needs_restart = self.supervisor.reload(cfg)
        if cfg.raw["event_log"] != self.cfg.raw["event_log"]:
            try:
                new = self._open_event_log(cfg)
            except OSError as e:
                log(f"SIGHUP: event_log.destination: {e}; keeping the old one")
            else:
                self.events.close()
                self.events = new
        else:
            self.events.reopen()
        self.cfg = cfg
        msg = "SIGHUP: configuration reloaded"
        if needs_restart:
            msg += f"; restart to apply: {', '.join(needs_restart)}"
        log(msg)
