"""Offline runs: capture files through one Pipeline, as ``analyze`` (and tests) need them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .capture import FileSource, merged
from .config import Config, load
from .metrics import AeLabeler
from .pipeline import Pipeline
from .sites import SiteMap


def open_sources(paths: Iterable[str], ports: Iterable[int], user_filter: str | None = None,
                 drop_pure_acks: bool = False) -> list[FileSource]:
    """Open every file first, so a bad one (or a bad filter) fails before any work (raises
    CaptureError). ``user_filter``, ``drop_pure_acks``: the configuration's (Config.filter_options)."""
    ports = list(ports)
    return [FileSource(path, ports, user_filter, drop_pure_acks=drop_pure_acks) for path in paths]


def run(sources: list[FileSource], cfg: Config | None = None, extra_ports: Iterable[int] = (),
        on_association: Callable | None = None, tick: Callable[[Pipeline], None] | None = None,
        labeler: AeLabeler | None = None, on_tls: Callable | None = None) -> Pipeline:
    """Feed every frame of ``sources`` (merged by timestamp) through a new Pipeline and finish it.

    Read errors (e.g. a truncated file) stop that file; they are left in ``source.error``.
    ``tick(pipeline)`` is called every few thousand frames (progress display).
    """
    cfg = cfg or load(None)
    labeler = labeler or AeLabeler(cfg.max_ae_titles, cfg.ae_aliases)
    pipe = Pipeline(cfg.flow_settings(extra_ports), labeler, on_association, sites=SiteMap(cfg.sites))
    pipe.evidence = cfg.evidence_writer()
    pipe.on_tls = on_tls
    if len(sources) == 1:
        src = sources[0]
        src.dispatch_all(pipe.callback(pipe.decoder(src.linktype)), tick and (lambda: tick(pipe)))
    else:
        callbacks = {id(s): pipe.callback(pipe.decoder(s.linktype)) for s in sources}
        count = 0
        for ts, frame, src in merged(sources):
            callbacks[id(src)](ts, frame)
            count += 1
            if tick is not None and count & 0xFFF == 0:
                tick(pipe)
    pipe.finish()
    return pipe


def analyze_files(paths: Iterable[str], ports: Iterable[int] = (), cfg: Config | None = None,
                  on_association: Callable | None = None) -> Pipeline:
    cfg = cfg or load(None)
    return run(open_sources(paths, cfg.capture_ports(ports), **cfg.filter_options), cfg, ports, on_association)
