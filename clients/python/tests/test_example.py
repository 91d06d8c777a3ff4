"""examples/flask_api.py run as its own process and driven end to end with
``requests`` against a real tokenwatch, through a tokenwatch outage; and the
README shows that same example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from conftest import ALICE_PASSWORD

from tokenwatch_server import REPO, free_port

HERE = Path(__file__).resolve().parents[1]
EXAMPLE = HERE / "examples" / "flask_api.py"


@pytest.fixture
def example(own_tw: Any) -> Iterator[str]:
    own_tw.server.start()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(HERE / "src"), PORT=str(port), TOKENWATCH_URL=own_tw.server.base,
               TOKENWATCH_ISSUER=own_tw.server.issuer, TOKENWATCH_INGEST_KEY=own_tw.ingest_key)  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/api/protected", timeout=5)
            break
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the example did not start: {proc.stderr.read() if proc.stderr else ''!r}")
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


def test_the_example_app_end_to_end(example: str, own_tw: Any) -> None:
    s = own_tw.server
    ua = {"User-Agent": "example-e2e/1"}
    r = requests.post(example + "/login", json={"username": "alice", "password": "wrong-password-00"}, headers=ua, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = requests.post(example + "/login", json={"username": "alice", "password": ALICE_PASSWORD}, headers=ua, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    token = r.json()["access_token"]

    r = requests.get(example + "/api/protected", headers={"Authorization": f"Bearer {token}", **ua}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"message": "Hello, alice!"})
    r = requests.get(example + "/api/protected", headers=ua, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="tokenwatch"'
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    r = requests.get(example + "/api/protected", headers={"Authorization": f"Bearer {forged}", **ua}, timeout=30)
    assert r.status_code == 401 and 'error_description="bad_signature"' in r.headers["WWW-Authenticate"]

    # tokenwatch recorded the logins itself, and the app's decisions arrive from its source.
    logins = [(e["kind"], e["username"]) for e in s.events(source="tokenwatch") if e["kind"].startswith("auth.login")]
    assert logins == [("auth.login.failure", "alice"), ("auth.login.success", "alice")]
    reported = s.wait_for_events(3, source="py-tests", user_agent="example-e2e/1")
    assert [(e["kind"], e["reason"]) for e in reported] == [
        ("access.granted", None), ("access.denied", "missing_token"), ("access.denied", "bad_signature")]  # fmt: skip
    assert reported[0]["username"] == "alice" and reported[0]["path"] == "/api/protected"

    # tokenwatch down: tokens keep verifying with the cached keys; logins are 503, never 500.
    s.stop()
    r = requests.get(example + "/api/protected", headers={"Authorization": f"Bearer {token}", **ua}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"message": "Hello, alice!"})
    r = requests.post(example + "/login", json={"username": "alice", "password": ALICE_PASSWORD}, timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"

    # Back up: what was reported meanwhile is delivered.
    s.start()
    got = s.wait_for_events(4, source="py-tests", user_agent="example-e2e/1")
    assert len(got) == 4 and got[-1]["kind"] == "access.granted"


def test_the_readme_shows_the_example() -> None:
    readme = (REPO / "README.md").read_text()
    m = re.search(r"<!-- python-example: clients/python/examples/flask_api.py -->\n```python\n(.*?)```", readme, re.S)
    assert m, "README's python-example block"
    example = EXAMPLE.read_text()
    code = example[example.index("import os") : example.index('if __name__ == "__main__":')].strip()
    assert m.group(1).strip() == code
