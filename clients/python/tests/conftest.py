"""Fixtures: a real tokenwatch server (see tokenwatch_server.py), users and an ingest key.

With ``TOKENWATCH_REQUIRE_PYTHON`` set (CI), a skipped test fails the run:
every test here must run there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tokenwatch_server import TokenwatchServer  # noqa: E402

ALICE_PASSWORD = "alice-password-0123"
BOB_PASSWORD = "bob-password-456789"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("TOKENWATCH_REQUIRE_PYTHON"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(f"FAILED: {skipped} tests skipped, and TOKENWATCH_REQUIRE_PYTHON forbids skipping")


class Setup:
    """A running server with users alice (role user) and bob (role admin) and an ingest key."""

    def __init__(self, server: TokenwatchServer, ingest_key: str) -> None:
        self.server = server
        self.ingest_key = ingest_key

    def alice(self, scope: "str | None" = None) -> str:
        return self.server.login("alice", ALICE_PASSWORD, scope)

    def bob(self, scope: "str | None" = None) -> str:
        return self.server.login("bob", BOB_PASSWORD, scope)


def prepare(server: TokenwatchServer, source: str = "py-tests") -> Setup:
    server.add_user("alice", ALICE_PASSWORD, "user")
    server.add_user("bob", BOB_PASSWORD, "admin")
    return Setup(server, server.add_source(source))


@pytest.fixture(scope="session")
def tw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One server for the tests that do not stop it. A batch larger than 100
    events is refused with 413, so the reporter's splitting is exercised too."""
    server = TokenwatchServer(tmp_path_factory.mktemp("tw"), "[ingest]\nmax_batch_events = 100\n")
    setup = prepare(server)
    server.start()
    yield setup
    server.stop()


@pytest.fixture
def own_tw(tmp_path: Path) -> Iterator[Setup]:
    """A server of the test's own, prepared but not started (the test stops and starts it)."""
    server = TokenwatchServer(tmp_path)
    setup = prepare(server)
    yield setup
    server.stop()
