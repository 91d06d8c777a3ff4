"""Reporting an application's own decisions to tokenwatch's ingest API
(``POST /api/v1/events``) from a background thread.

The request thread only appends the event to a bounded in-memory buffer (a few
microseconds, whatever tokenwatch is doing); one sender thread sends batches as
NDJSON, retrying with exponential backoff and jitter while tokenwatch is
unreachable, answers 5xx or 429 (honouring ``Retry-After``). Events tokenwatch
refuses as invalid are counted, never retried. Delivery is at least once: a
batch whose answer was lost in a timeout is sent again.

When tokenwatch stays down, the buffer fills. ``fail_mode`` says what then:

* ``"open"`` (default): the application keeps serving; events that do not fit
  are dropped and counted (``stats().dropped_buffer_full``).
* ``"closed"``: :meth:`Reporter.report` raises
  :class:`~tokenwatch.errors.ReportingUnavailable` while the buffer is full or
  since a delivery failed and none has worked again, so a protected route answers
  503 instead of acting without a record. The batch being retried is the probe
  that ends this state.

On interpreter exit (``atexit``) or :meth:`Reporter.close`, what is buffered is
sent for up to ``shutdown_timeout`` seconds; what is still undelivered then is
counted as ``dropped_at_shutdown``.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

from . import _http
from .errors import ConfigurationError, ReportingUnavailable

log = logging.getLogger("tokenwatch.reporter")

FAIL_OPEN = "open"
FAIL_CLOSED = "closed"

# The ingest schema's fields and their limits in bytes (README, "Ingest").
_FIELD_LIMITS = {
    "kind": 256, "outcome": 256, "time": 256, "reason": 256, "subject": 256, "username": 256,
    "client_ip": 256, "user_agent": 1024, "method": 16, "path": 1024, "jti": 256, "kid": 256,
    "alg": 16, "token_fp": 128,
}  # fmt: skip


@dataclass(frozen=True)
class ReporterStats:
    """A snapshot of what the reporter did since it started."""

    queued: int  # buffered or being sent
    sent: int  # accepted by tokenwatch
    dropped_buffer_full: int  # fail-open: did not fit in the buffer
    dropped_rejected: int  # refused by tokenwatch (an invalid event, a refused key)
    dropped_at_shutdown: int  # still undelivered when the shutdown timeout ran out
    refused_closed: int  # fail-closed: report() raised ReportingUnavailable
    retries: int  # deliveries attempted again after a failure
    healthy: bool  # the last delivery attempt worked
    last_error: Optional[str]

    @property
    def dropped(self) -> int:
        """Every event that will never reach tokenwatch."""
        return self.dropped_buffer_full + self.dropped_rejected + self.dropped_at_shutdown


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clip(value: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, cut on a character boundary, control characters replaced."""
    value = _CONTROL.sub("?", value)
    if len(value) * 4 <= limit:  # cannot be too long: skip encoding
        return value
    data = value.encode("utf-8", "replace")
    return value if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def normalize_event(event: Mapping[str, Any]) -> Dict[str, Any]:
    """The event as the ingest API accepts it: empty fields left out, strings cut
    to the documented limits, a ``client_ip`` that is not an address left out,
    ``time`` set to now when absent."""
    out: Dict[str, Any] = {}
    for k, v in event.items():
        if v is None or v == "":
            continue
        if k == "detail":
            out[k] = v
        elif k == "client_ip":
            try:  # tokenwatch refuses a whole event for a bad address; leave it out instead
                out[k] = str(ipaddress.ip_address(str(v).split("%")[0]))
            except ValueError:
                continue
        elif k in _FIELD_LIMITS:
            out[k] = _clip(str(v), _FIELD_LIMITS[k])
        else:
            raise ValueError(f"field {k!r} is not part of tokenwatch's ingest schema")
    if "kind" not in out or "outcome" not in out:
        raise ValueError("an event needs a kind and an outcome")
    out.setdefault("time", _now_rfc3339())
    return out


class Reporter:
    """A background batcher to tokenwatch's ingest API.

    ``url`` is tokenwatch's base URL, ``api_key`` an ingest key from
    ``tokenwatch sources add NAME`` (``twk_...``).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        fail_mode: str = FAIL_OPEN,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        shutdown_timeout: float = 5.0,
        ca_file: Optional[str] = None,
    ) -> None:
        if fail_mode not in (FAIL_OPEN, FAIL_CLOSED):
            raise ConfigurationError(f"fail_mode must be {FAIL_OPEN!r} or {FAIL_CLOSED!r}, not {fail_mode!r}")
        if not api_key:
            raise ConfigurationError("an ingest API key is required (tokenwatch sources add NAME)")
        if max_buffer < 1 or not 1 <= batch_size <= 10_000:
            raise ConfigurationError("max_buffer must be at least 1 and batch_size within 1..=10000")
        self.endpoint = url.rstrip("/") + "/api/v1/events"
        self.fail_mode = fail_mode
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.shutdown_timeout = shutdown_timeout
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/x-ndjson"}
        self._context = _http.ssl_context(ca_file)
        self._init_state()
        self._start()
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        if hasattr(os, "register_at_fork"):  # a pre-fork server's workers each need their own thread
            os.register_at_fork(after_in_child=lambda: _restart_in_child(ref))

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._buffer: Deque[Dict[str, Any]] = deque()
        self._inflight = 0
        self._closing = False
        self._deadline: Optional[float] = None
        self._flush_now = False
        self._oldest_at = 0.0
        self._counts = dict(sent=0, dropped_buffer_full=0, dropped_rejected=0, dropped_at_shutdown=0,
                            refused_closed=0, retries=0)  # fmt: skip
        self._healthy = True
        self._last_error: Optional[str] = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tokenwatch-reporter", daemon=True)
        self._thread.start()

    # ---- the request thread's side -------------------------------------------------

    def report(self, event: Mapping[str, Any]) -> None:
        """Queues one event (see the ingest schema); returns at once.

        Raises ``ValueError`` for a field the schema does not have, and in
        fail-closed mode :class:`ReportingUnavailable` when the event cannot be
        queued for delivery.
        """
        ev = normalize_event(event)
        with self._cond:
            if self._closing:
                self._counts["dropped_at_shutdown"] += 1
                return
            full = len(self._buffer) + self._inflight >= self.max_buffer
            if self.fail_mode == FAIL_CLOSED and (full or not self._healthy):
                self._counts["refused_closed"] += 1
                raise ReportingUnavailable(
                    "tokenwatch cannot record this decision now: "
                    + ("the report buffer is full" if full else f"delivery is failing ({self._last_error})")
                )
            if full:
                self._counts["dropped_buffer_full"] += 1
                if self._counts["dropped_buffer_full"] == 1:
                    log.error("tokenwatch report buffer full (%d events): dropping events (fail-open)", self.max_buffer)
                return
            self._buffer.append(ev)
            n = len(self._buffer)
            if n == 1:
                self._oldest_at = time.monotonic()
                self._cond.notify()  # starts the sender's flush_interval clock
            elif n == self.batch_size:
                self._cond.notify()

    def stats(self) -> ReporterStats:
        with self._cond:
            return ReporterStats(
                queued=len(self._buffer) + self._inflight,
                healthy=self._healthy,
                last_error=self._last_error,
                **self._counts,
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Sends what is buffered now; ``True`` once nothing is left, ``False`` at the timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            self._flush_now = True
            self._cond.notify_all()
            while self._buffer or self._inflight:
                left = end - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Delivers what is buffered for up to ``timeout`` (default ``shutdown_timeout``)
        seconds, then stops. ``True`` when everything was delivered. Idempotent."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        with self._cond:
            lost_before = self._counts["dropped_at_shutdown"]
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(max(0.0, (self._deadline or 0) - time.monotonic()) + 1.0)
        with self._cond:
            return not self._buffer and not self._inflight and self._counts["dropped_at_shutdown"] == lost_before

    # ---- the sender thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            except Exception as e:  # never let the thread die: the app would stop reporting silently
                log.exception("tokenwatch reporter: unexpected error; %d events dropped", len(batch))
                self._update(dropped_rejected=len(batch), error=f"unexpected: {e}")
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _next_batch(self) -> Optional[List[Dict[str, Any]]]:
        """Waits for a full batch, the oldest event to be ``flush_interval`` old, a
        flush or a close; ``None`` when closed and nothing is left."""
        with self._cond:
            while True:
                if self._deadline is not None and time.monotonic() >= self._deadline and self._buffer:
                    self._counts["dropped_at_shutdown"] += len(self._buffer)
                    log.error("tokenwatch reporter: %d events undelivered at shutdown", len(self._buffer))
                    self._buffer.clear()
                if self._buffer and (
                    self._closing
                    or self._flush_now
                    or len(self._buffer) >= self.batch_size
                    or time.monotonic() - self._oldest_at >= self.flush_interval
                ):
                    batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                    self._inflight = len(batch)
                    self._oldest_at = time.monotonic()
                    return batch
                if not self._buffer:
                    self._flush_now = False
                    self._cond.notify_all()  # wakes flush()
                    if self._closing:
                        return None
                    self._cond.wait()
                else:
                    self._cond.wait(max(0.001, self._oldest_at + self.flush_interval - time.monotonic()))

    def _update(self, *, error: Optional[str] = None, healthy: Optional[bool] = None, **counts: int) -> None:
        with self._cond:
            for name, n in counts.items():
                self._counts[name] += n
            if error is not None:
                self._last_error = error
            if healthy is not None:
                if healthy != self._healthy:
                    if healthy:
                        log.info("tokenwatch ingest: delivering again")
                    else:
                        log.warning("tokenwatch ingest failing: %s", error)
                self._healthy = healthy

    def _deliver(self, batch: List[Dict[str, Any]]) -> None:
        """Sends one batch until it is accepted, refused, or the shutdown deadline passes."""
        pending = [batch]
        attempt = 0
        while pending:
            part = pending.pop()
            verdict, wait = self._send_once(part)
            if verdict == "split":  # 413: too large for tokenwatch's limits; halve it
                half = len(part) // 2
                pending += [part[half:], part[:half]]
                continue
            if verdict == "done":
                attempt = 0
                continue
            # Retry the same part after a backoff, unless shutting down past the deadline.
            pending.append(part)
            delay = wait if wait is not None else min(self.backoff_max, self.backoff_initial * 2 ** min(attempt, 30))
            delay *= random.uniform(0.5, 1.0) if wait is None else 1.0
            attempt += 1
            with self._cond:
                end = time.monotonic() + delay
                while True:
                    now = time.monotonic()
                    if self._deadline is not None and now >= self._deadline:
                        lost = sum(len(p) for p in pending) + len(self._buffer)
                        self._buffer.clear()
                        self._counts["dropped_at_shutdown"] += lost
                        log.error("tokenwatch reporter: %d events undelivered at shutdown", lost)
                        return
                    if self._closing:  # shutting down: retry often until the deadline
                        end = min(end, now + 0.2, self._deadline or end)
                    if now >= end:
                        break
                    self._cond.wait(end - now)
                self._counts["retries"] += 1

    def _send_once(self, batch: List[Dict[str, Any]]) -> Tuple[str, Optional[float]]:
        """One POST. ``("done", None)``, ``("split", None)`` or ``("retry", seconds or None)``."""
        body = "\n".join(json.dumps(ev, separators=(",", ":")) for ev in batch).encode("utf-8")
        try:
            resp = _http.request("POST", self.endpoint, body=body, headers=self._headers, timeout=self.timeout, context=self._context)
        except _http.TransportError as e:
            self._update(error=f"{self.endpoint}: {e}", healthy=False)
            return "retry", None
        status = resp.status
        if status == 200:
            try:
                answer = resp.json()
                accepted, rejected = int(answer["accepted"]), int(answer["rejected"])
            except (ValueError, KeyError, TypeError):
                accepted, rejected, answer = len(batch), 0, {}
            self._update(sent=accepted, healthy=True)
            if rejected:
                self._refused(rejected, answer.get("errors"))
            return "done", None
        if status in (400, 422):
            self._update(healthy=True)
            self._refused(len(batch), _errors_of(resp))
            return "done", None
        if status == 413 and len(batch) > 1:
            return "split", None
        if status in (401, 403, 413):
            why = "the ingest API key is refused (unknown or revoked)" if status != 413 else "an event is too large"
            self._update(dropped_rejected=len(batch), error=f"HTTP {status}: {why}", healthy=status == 413)
            log.error("tokenwatch refused %d reported events: HTTP %d, %s", len(batch), status, why)
            return "done", None
        retry_after = _retry_after(resp.headers)
        # 429 is back-pressure from a working tokenwatch; anything else means it is not recording.
        self._update(error=f"{self.endpoint}: HTTP {status}", healthy=status == 429)
        return "retry", retry_after

    def _refused(self, n: int, errors: Any) -> None:
        self._update(dropped_rejected=n, error=f"tokenwatch refused {n} events: {errors}")
        log.warning("tokenwatch refused %d reported events: %s", n, errors)


def _errors_of(resp: _http.Response) -> Any:
    try:
        return resp.json().get("errors") or resp.json().get("message")
    except (ValueError, AttributeError):
        return resp.body[:200]


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return min(300.0, max(0.0, float(v)))
            except ValueError:
                return None
    return None


def _close_at_exit(ref: "weakref.ReferenceType[Reporter]") -> None:
    r = ref()
    if r is not None:
        r.close()


def _restart_in_child(ref: "weakref.ReferenceType[Reporter]") -> None:
    r = ref()
    if r is not None:
        r._init_state()  # the parent's buffer and locks are not this process's to send
        r._start()
