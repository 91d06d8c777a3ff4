"""A real tokenwatch server for the tests: the binary from ``TOKENWATCH_BIN``
(or built with cargo from this checkout), a fresh data directory, a free port
of 127.0.0.1 kept across restarts, and the issuer set in a config file."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]
_built: Optional[str] = None


def binary() -> str:
    """The tokenwatch executable: ``TOKENWATCH_BIN``, else ``cargo build`` of this checkout."""
    global _built
    env = os.environ.get("TOKENWATCH_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError(f"TOKENWATCH_BIN={env} is not an executable")
        return env
    if _built is None:
        out = subprocess.run(
            ["cargo", "build", "--workspace", "--message-format=json"],
            cwd=REPO, stdout=subprocess.PIPE, check=True, text=True,
        )  # fmt: skip
        exes = [
            m["executable"]
            for m in map(json.loads, out.stdout.splitlines())
            if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tokenwatch" and m.get("executable")
        ]
        if not exes:
            raise RuntimeError("cargo built no tokenwatch executable")
        _built = exes[-1]
    return _built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TokenwatchServer:
    """One tokenwatch data directory and the server process serving it."""

    def __init__(self, root: Path, extra_config: str = "") -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The issuer is ours to choose and pass on: never the server's default.
        self.issuer = self.base
        self.config = root / "tokenwatch.toml"
        self.config.write_text(f'issuer = "{self.issuer}"\n{extra_config}')
        self.admin_password: Optional[str] = None
        self.proc: Optional[subprocess.Popen[str]] = None
        self._lines: "queue.Queue[str]" = queue.Queue()

    def _env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
        env["TOKENWATCH_LOG"] = "info"
        return env

    def cli(self, *args: str, stdin: str = "") -> str:
        """Runs ``tokenwatch ARGS`` on the data directory (the server must be stopped
        for commands that write the audit trail); returns stdout."""
        out = subprocess.run(
            [binary(), "--data-dir", str(self.data_dir), "--config", str(self.config), *args],
            input=stdin, capture_output=True, text=True, env=self._env(), cwd=self.root,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"tokenwatch {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out.stdout

    def add_source(self, name: str) -> str:
        for line in self.cli("sources", "add", name).splitlines():
            if line.startswith("api_key: "):
                return line[len("api_key: ") :].strip()
        raise RuntimeError("sources add printed no api_key")

    def add_user(self, name: str, password: str, role: str = "user") -> None:
        self.cli("users", "add", name, "--role", role, "--password-stdin", stdin=password)

    def start(self) -> None:
        assert self.proc is None, "already running"
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [binary(), "--data-dir", str(self.data_dir), "--config", str(self.config),
             "serve", "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=self._env(), cwd=self.root,
        )  # fmt: skip
        log.close()
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()
        deadline = time.monotonic() + 60
        expect_password = False
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"tokenwatch did not start within 60 s; see {self.root / 'server.log'}")
            if expect_password:
                self.admin_password = line.strip()
                expect_password = False
            if "one-time password" in line:
                expect_password = True
            if line.startswith("tokenwatch listening on "):
                return

    @staticmethod
    def _pump(proc: "subprocess.Popen[str]", lines: "queue.Queue[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, path: str) -> str:
        return self.base + path

    def login(self, username: str, password: str, scope: Optional[str] = None) -> str:
        """An access token from the password grant."""
        form = {"grant_type": "password", "username": username, "password": password}
        if scope:
            form["scope"] = scope
        req = urllib.request.Request(self.url("/oauth/token"), data=urllib.parse.urlencode(form).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["access_token"])

    def events(self, **where: str) -> List[Dict[str, Any]]:
        """Events in the audit record (read-only, beside the running writer), oldest first."""
        clauses = " AND ".join(f"{k} = ?" for k in where) or "1"
        db = sqlite3.connect(f"file:{self.data_dir / 'audit.db'}?mode=ro", uri=True, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, kind, outcome, reason, subject, username, client_ip, user_agent, method, path,"
                f" jti, kid, alg, token_fp, source, detail FROM events WHERE {clauses} ORDER BY id",
                list(where.values()),
            ).fetchall()
        finally:
            db.close()
        out = []
        for r in rows:
            d = dict(r)
            d["detail"] = json.loads(d["detail"]) if d["detail"] else None
            out.append(d)
        return out

    def wait_for_events(self, n: int, timeout: float = 30, **where: str) -> List[Dict[str, Any]]:
        """At least ``n`` events matching ``where``, waiting for them to be committed."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(**where)
            if len(evs) >= n or time.monotonic() > deadline:
                return evs
            time.sleep(0.1)
