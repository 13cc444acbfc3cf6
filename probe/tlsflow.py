"""A TCP connection on a DICOM-over-TLS port: reassembled directions fed to a TLS observer.

Sans-IO like :mod:`probe.connection`: the same reassembly, gap and close handling, but the in-order
bytes go to a :class:`probe.tls.TlsSession`, which reads the cleartext handshake and skips the
encrypted records by length. The DICOM inside is never inspected.
"""

from __future__ import annotations

from .connection import Limits, StreamGap, TcpConnection
from .stream import Budget
from .tls import TlsSession
from .tlscert import CertParser

_BY = ("client", "server")


class TlsConnection(TcpConnection):
    __slots__ = ("session", "framers", "certs")

    def __init__(self, client: str, server: str, *, limits: Limits, budget: Budget | None = None,
                 certs: CertParser | None = None):
        super().__init__(client, server, limits=limits, budget=budget)
        self.certs = certs
        self.session: TlsSession | None = None  # made at the first byte: a connection without any is no TLS
        self.framers: list = [None, None]  # the session's record framers (the pipeline's fast lane reads them)

    @property
    def answered(self) -> bool:
        s = self.session
        return s is not None and s.record.version is not None or self.fin[1]

    def _session(self, ts: float) -> TlsSession:
        s = self.session
        if s is None:
            s = self.session = TlsSession(self.client, self.server, ts, synced=(self.syn_seen[0], self.syn_seen[1]),
                                          certs=self.certs)
            self.framers = s.framers
        return s

    def _deliver(self, d: int, chunks: list, ts: float, out: list) -> None:
        session = self._session(ts)
        from_client = d == 0
        for chunk in chunks:
            if chunk.__class__ is int:
                out.append(StreamGap(chunk, False))
                session.gap(from_client, chunk, ts, out)
            else:
                session.data(from_client, chunk, ts, out)

    def _transport_closed(self, ts: float, out: list) -> None:
        if self.session is not None:
            by = None if self.closed_by is None else _BY[self.closed_by]
            self.session.tcp_closed(ts, reset=self.reset, by=by, out=out)

    def _timed_out(self, ts: float, out: list) -> None:
        if self.session is not None:
            self.session.timeout(ts, out)

    def _capture_ended(self, ts: float, out: list) -> None:
        if self.session is not None:
            self.session.end(ts, out)
