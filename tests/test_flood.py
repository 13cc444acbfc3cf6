"""Bounded memory under floods (issue 6): 1M distinct SYN-only flows, and 100k half-open associations.

Each flood runs through the real pipeline in its own process (tests/flood/run_flood.py), with a
real rejected association interleaved every 1 % of the flood: all of them must be counted, the flow
table must stay at its cap with evictions counted by reason, and resident memory must stay bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).parent / "flood" / "run_flood.py"
RSS_LIMIT_MIB = 700  # 100k tracked connections (the default cap) take ~400 MiB here


def test_syn_flood_and_half_open_flood():
    procs = {
        "syn": subprocess.Popen([sys.executable, str(RUNNER), "syn", "1000000"], stdout=subprocess.PIPE, text=True),
        "halfopen": subprocess.Popen([sys.executable, str(RUNNER), "halfopen", "200000"], stdout=subprocess.PIPE,
                                     text=True),
    }
    results = {}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        results[name] = json.loads(out)

    syn = results["syn"]
    assert syn["legit"] == 100 and syn["rejects"] == 100 and syn["requests"] == 100
    assert syn["flows"] <= 100_000
    assert syn["evicted"]["pressure-handshake"] >= 1_000_000 - 100_000
    assert syn["maxrss_mib"] < RSS_LIMIT_MIB

    half = results["halfopen"]
    assert half["legit"] == 100 and half["rejects"] == 100
    assert half["requests"] == 200_000 + 100  # every RQ is seen, even those later evicted
    assert half["flows"] <= 100_000
    assert half["evicted"]["pressure-unanswered"] >= 200_000 - 100_000
    assert half["maxrss_mib"] < RSS_LIMIT_MIB
