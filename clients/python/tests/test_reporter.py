"""The background reporter: delivery into a real tokenwatch, refusals counted,
and a dead ingest endpoint costing the request thread next to nothing (measured)
with memory bounded by the buffer."""

from __future__ import annotations

import gc
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tokenwatch import ReportingUnavailable, Reporter
from tokenwatch_server import free_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


def event(**extra: Any) -> Dict[str, Any]:
    ev = {"kind": "access.granted", "outcome": "success", "subject": "u-1", "username": "ursula",
          "client_ip": "192.0.2.7", "method": "GET", "path": "/api/orders", "jti": str(uuid.uuid4()),
          "token_fp": "0123456789abcdef", "user_agent": "pytest/1"}  # fmt: skip
    ev.update(extra)
    return ev


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections (into the backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_events_reach_the_audit_trail_split_to_the_servers_batch_limit(tw: Any) -> None:
    r = Reporter(tw.server.base, tw.ingest_key, batch_size=500)
    run = str(uuid.uuid4())
    for i in range(250):
        r.report(event(jti=f"{run}-{i}", time="2026-01-02T03:04:05.000006Z" if i == 0 else None))
    assert r.flush(30)
    s = r.stats()
    assert (s.sent, s.dropped, s.queued, s.healthy) == (250, 0, 0, True)
    stored = [e for e in tw.server.events(source="py-tests", kind="access.granted") if (e["jti"] or "").startswith(run)]
    assert len(stored) == 250
    first = next(e for e in stored if e["jti"] == f"{run}-0")
    assert (first["subject"], first["client_ip"], first["path"], first["token_fp"]) == ("u-1", "192.0.2.7", "/api/orders", "0123456789abcdef")
    r.close()


def test_refused_events_and_keys_are_counted_not_retried(tw: Any) -> None:
    r = Reporter(tw.server.base, tw.ingest_key)
    r.report(event())
    r.report(event(kind="admin.login", outcome="success"))  # tokenwatch's own kind: refused
    r.report(event(client_ip="not-an-address"))  # left out, not a refusal of the whole event
    assert r.flush(30)
    s = r.stats()
    assert (s.sent, s.dropped_rejected, s.healthy) == (2, 1, True)
    assert "admin.login" in (s.last_error or "")
    with pytest.raises(ValueError):
        r.report(event(token="eyJ..."))  # never a raw token: not in the schema

    bad = Reporter(tw.server.base, "twk_not-a-key")
    bad.report(event())
    bad.flush(30)
    s = bad.stats()
    assert (s.sent, s.dropped_rejected, s.healthy) == (0, 1, False)
    assert "401" in (s.last_error or "")


def _measure(r: Reporter, n: int) -> List[float]:
    ev = event()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        r.report(ev)
        lat.append(time.perf_counter() - t0)
    return lat


@pytest.mark.parametrize("dead", ["refused", "blackhole"])
def test_a_dead_endpoint_costs_microseconds_and_bounded_memory(dead: str, blackhole: str) -> None:
    url = blackhole if dead == "blackhole" else f"http://127.0.0.1:{free_port()}"
    r = Reporter(url, "twk_x", max_buffer=1000, batch_size=100, flush_interval=0.01, timeout=0.5,
                 backoff_initial=0.01, backoff_max=0.05, shutdown_timeout=0.5)  # fmt: skip
    ev = event()
    gc.collect()
    tracemalloc.start()
    for _ in range(2000):  # fills the buffer
        r.report(ev)
    full = tracemalloc.get_traced_memory()[0]
    for _ in range(20000):
        r.report(ev)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    lat = _measure(r, 20000)
    s = r.stats()
    assert s.queued <= 1000
    assert s.sent == 0 and not s.healthy
    assert s.dropped_buffer_full >= 42000 - 1000
    lat.sort()
    p50, p99, worst = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
    print(f"\nreport() with a {dead} endpoint: p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us, max {worst * 1e3:.2f} ms; "
          f"memory growth over 20000 more reports {(after - full) / 1024:.0f} KiB")  # fmt: skip
    assert p99 < 0.002, "reporting must not slow a request down"
    assert after - full < 256 * 1024, "a full buffer must not grow"
    assert statistics.mean(lat) < 0.001
    t0 = time.monotonic()
    assert r.close() is False
    assert time.monotonic() - t0 < 3.0, "shutdown waits at most about its timeout"
    assert r.stats().dropped_at_shutdown > 0


def test_fail_closed_refuses_while_delivery_fails() -> None:
    r = Reporter(f"http://127.0.0.1:{free_port()}", "twk_x", fail_mode="closed", flush_interval=0.01,
                 backoff_initial=0.05, backoff_max=0.1)  # fmt: skip
    r.report(event())  # nothing is known to be wrong yet
    deadline = time.monotonic() + 10
    while r.stats().healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ReportingUnavailable, match="delivery is failing"):
        r.report(event())
    assert r.stats().refused_closed == 1
    r.close(0.2)


def test_fail_closed_refuses_when_the_buffer_is_full(blackhole: str) -> None:
    r = Reporter(blackhole, "twk_x", fail_mode="closed", max_buffer=3, timeout=5, flush_interval=5)
    for _ in range(3):
        r.report(event())
    with pytest.raises(ReportingUnavailable, match="buffer is full"):
        r.report(event())
    r.close(0.1)


def _python(script: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_buffered_events_are_sent_at_exit(tw: Any) -> None:
    run = str(uuid.uuid4())
    out = _python(f"""
        from tokenwatch import Reporter
        r = Reporter({tw.server.base!r}, {tw.ingest_key!r}, flush_interval=60)
        for i in range(5):
            r.report({{"kind": "token.rejected", "outcome": "failure", "reason": "expired", "jti": "{run}-%d" % i}})
        # no flush, no close: the interpreter's exit sends them
    """)
    assert out.returncode == 0, out.stderr
    got = [e for e in tw.server.wait_for_events(5, source="py-tests", kind="token.rejected") if (e["jti"] or "").startswith(run)]
    assert len(got) == 5


def test_exit_is_not_held_up_by_a_dead_endpoint(blackhole: str) -> None:
    t0 = time.monotonic()
    out = _python(f"""
        from tokenwatch import Reporter
        r = Reporter({blackhole!r}, "twk_x", shutdown_timeout=1.0, timeout=30)
        r.report({{"kind": "access.granted", "outcome": "success"}})
    """)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 10
