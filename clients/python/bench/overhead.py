"""What the package costs a request, against baselines measured in the same run.

    TOKENWATCH_BIN=target/debug/tokenwatch python3 clients/python/bench/overhead.py

Starts a real tokenwatch (as the tests do). Rounds of each case are interleaved
so machine noise hits every case alike; figures are medians per request.

1. Verify: ``Verifier.verify`` against bare PyJWT ``jwt.decode`` with the same
   key, algorithm, audience and issuer (the extra checks' cost).
2. A protected Flask route (test client, in process) with reporting off, on to a
   live tokenwatch, on to a dead endpoint (connection refused) and to a black
   hole (accepts, never answers), against the same route unprotected.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

import jwt  # noqa: E402
from flask import Flask  # noqa: E402

from conftest import prepare  # noqa: E402
from tokenwatch import Guard, Reporter, Verifier  # noqa: E402
from tokenwatch.flask import Tokenwatch  # noqa: E402
from tokenwatch_server import TokenwatchServer, free_port  # noqa: E402

ROUNDS, PER_ROUND = 10, 200


def median_us(cases: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            for _ in range(PER_ROUND):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def flask_call(guard: Guard, token: str) -> Callable[[], Any]:
    app = Flask("bench")
    tw = Tokenwatch(app, guard=guard)

    @app.get("/open")
    def open_route() -> Any:
        return {"ok": True}

    @app.get("/api/orders")
    @tw.require
    def orders() -> Any:
        return {"user": tw.token.username}

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def call(path: str = "/api/orders") -> Any:
        r = client.get(path, headers=headers)
        assert r.status_code == 200, r.status_code
        return r

    return call


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tw-bench-"))
    server = TokenwatchServer(root)
    setup = prepare(server)
    server.start()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(4096)
    try:
        token = setup.alice()
        verifier = Verifier(server.base, issuer=server.issuer)
        key = verifier.jwks.get(jwt.get_unverified_header(token)["kid"])
        assert key is not None
        v = median_us({
            "PyJWT jwt.decode (baseline)": lambda: jwt.decode(
                token, key.key, algorithms=["ES256"], audience="tokenwatch-api", issuer=server.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]}),
            "tokenwatch Verifier.verify": lambda: verifier.verify(token),
        })  # fmt: skip
        print("| verify (ES256) | median per token | ratio |\n|---|---|---|")
        base = v["PyJWT jwt.decode (baseline)"]
        for k, us in v.items():
            print(f"| {k} | {us:.1f} µs | {us / base:.2f} |")

        def reporter(url: str) -> Reporter:
            return Reporter(url, setup.ingest_key, timeout=2.0, backoff_max=1.0)

        live = reporter(server.base)
        dead = reporter(f"http://127.0.0.1:{free_port()}")
        black = reporter(f"http://127.0.0.1:{hole.getsockname()[1]}")
        plain = flask_call(Guard(server.base, verifier=verifier), token)
        cases = {
            "unprotected route (baseline)": lambda: plain("/open"),
            "protected, no reporting": plain,
            "protected, reporting to tokenwatch": flask_call(Guard(server.base, verifier=verifier, reporter=live), token),
            "protected, reporting to a refused port": flask_call(Guard(server.base, verifier=verifier, reporter=dead), token),
            "protected, reporting to a black hole": flask_call(Guard(server.base, verifier=verifier, reporter=black), token),
        }
        r = median_us(cases)
        print("\n| Flask request (test client) | median | ratio to unprotected | ratio to no reporting |\n|---|---|---|---|")
        for k, us in r.items():
            print(f"| {k} | {us:.0f} µs | {us / r['unprotected route (baseline)']:.2f} | {us / r['protected, no reporting']:.2f} |")
        live.flush(30)
        for name, rep in (("tokenwatch", live), ("refused port", dead), ("black hole", black)):
            s = rep.stats()
            print(f"reporter to {name}: sent {s.sent}, queued {s.queued}, dropped {s.dropped}")
            rep.close(0.5)
    finally:
        hole.close()
        server.stop()


if __name__ == "__main__":
    main()
