"""The durable outbox: every finished vCon is on disk before the first delivery attempt, and each
(vCon, target) pair is marked delivered only after that target acknowledged it.

Storage is one SQLite database (``outbox.sqlite3`` in the spool directory) in WAL mode with
``synchronous=FULL``: a commit returns only after the WAL is fsynced, ``put_many`` is one transaction (one
fsync for a whole batch), readers in other processes (``outbox status`` beside the daemon) never block the
writer, and a ``kill -9`` at any point leaves either the old or the new state, never a torn one.

Tables::

    vcons(uuid PK, body, digest, generation, put_at)      body is NULL once every target acknowledged it
    deliveries(uuid, target, state, generation, attempts, next_at, lease_owner, lease_until,
               status, error, response, done_at)            one row per (vCon, target)
    targets(key PK, spec)                                   secret-free specs, so `outbox flush` can resume

Row states (a theory in three lines)::

    pending --2xx/ack--> delivered
    pending --retryable--> pending (attempts+1, next_at = now + backoff or Retry-After)
    pending --permanent, or max_attempts reached--> dead --retry_dead()--> pending

Delivery is at least once: the ack is committed after the upstream's 2xx, so a crash between the two
re-sends that one vCon (with the same ``Idempotency-Key``). A row is claimed with a lease naming this
process (host:pid); a restarted process releases leases of owners that no longer exist, so nothing waits
for a lease to time out after a crash.

Re-putting a uuid with the same body is a no-op (an acknowledged vCon is never posted again). Putting it
with a *different* body replaces the stored body, bumps its generation and re-arms every target, including
ones that acknowledged (or dead-lettered) the old body: an updated vCon must reach every upstream. An ack
for an older generation still in flight does not mark the new one delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import structlog

from .paths import default_spool_dir
from .sinks import DeliveryError, PermanentDeliveryError, RetryableDeliveryError, Sink, make_sink
from .targets import Target, TargetError, parse_target

__all__ = ["FlushResult", "Outbox", "TargetCounts", "default_spool_dir", "load_targets"]

log = structlog.get_logger("delivery.outbox")

DB_NAME = "outbox.sqlite3"
#: Backoff: first retry after about BACKOFF_BASE seconds, doubling up to BACKOFF_CAP (equal jitter).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
#: Retry-After values beyond this are clamped (a misconfigured upstream must not park a row for days).
RETRY_AFTER_CAP = 3600.0
#: How often the daemon loop looks for rows put by other processes when idle (seconds).
POLL_INTERVAL = 1.0
#: Extra lease time beyond a target's timeout, before another process may take a row over.
LEASE_MARGIN = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vcons (
    uuid TEXT PRIMARY KEY,
    body BLOB,
    digest TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    put_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    uuid TEXT NOT NULL REFERENCES vcons(uuid),
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    generation INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    status INTEGER,
    error TEXT,
    response TEXT,
    done_at REAL,
    PRIMARY KEY (uuid, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (target, state, next_at);
CREATE TABLE IF NOT EXISTS targets (key TEXT PRIMARY KEY, spec TEXT NOT NULL);
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TargetCounts:
    """Rows per state for one target."""

    pending: int = 0
    delivered: int = 0
    dead: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FlushResult:
    """What one :meth:`Outbox.deliver` call did."""

    #: Deliveries acknowledged during the call.
    delivered: int
    #: Attempts that failed and will be retried (or went dead on ``max_attempts``).
    failed_attempts: int
    #: Rows moved to dead-letter during the call.
    dead: int
    #: Rows still pending for this outbox's targets when the call returned.
    pending: int

    @property
    def complete(self) -> bool:
        return self.pending == 0


def body_of(vcon: Mapping[str, Any]) -> bytes:
    """The bytes we store and send: compact UTF-8 JSON, key order kept."""
    return json.dumps(vcon, ensure_ascii=False, separators=(",", ":")).encode()


def uuid_of(vcon: Mapping[str, Any]) -> str:
    """The vCon's uuid: top level (unsigned), or the JWS header ``uuid`` (signed form)."""
    value = vcon.get("uuid")
    if value is None and isinstance(vcon.get("signatures"), list) and vcon["signatures"]:
        header = vcon["signatures"][0].get("header")
        value = header.get("uuid") if isinstance(header, Mapping) else None
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise ValueError("the vCon has no usable 'uuid'")
    return value


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True  # cannot tell; the lease expires on its own
    pid_text = rest.partition(":")[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Outbox:
    """A spool directory holding vCons until each configured target has acknowledged them.

    ``clock`` (wall time, seconds) and ``sleep`` are injectable so tests can step time; ``rng`` drives
    the jitter. ``max_attempts=None`` retries retryable failures forever.
    """

    def __init__(
        self,
        spool_dir: Path,
        targets: Sequence[Target],
        *,
        concurrency: int = 4,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        sink_factory: Callable[[Target], Sink] = make_sink,
    ) -> None:
        keys = [target.key for target in targets]
        if len(set(keys)) != len(keys):
            raise TargetError("the same target is configured twice")
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.targets = tuple(targets)
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._sink_factory = sink_factory
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{self._rng.getrandbits(32):08x}"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.spool_dir / DB_NAME, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._tx():
            for target in self.targets:
                self._db.execute(
                    "INSERT OR REPLACE INTO targets (key, spec) VALUES (?, ?)",
                    (target.key, json.dumps(target.spec())),
                )
        self._release_dead_leases()
        self._last_lease_sweep = self.clock()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Counters since this object was made (for /metrics).
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    # ------------------------------------------------------------------ storage

    @contextlib.contextmanager
    def _tx(self) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, vcon: Mapping[str, Any], *, uuid: str | None = None) -> str:
        """Store a vCon durably (fsynced before this returns) and arm every target; returns its uuid.

        ``uuid`` overrides the one read from the vCon (needed for the encrypted form)."""
        return self.put_many([vcon], uuids=[uuid])[0]

    def put_many(self, vcons: Iterable[Mapping[str, Any]], *, uuids: Sequence[str | None] = ()) -> list[str]:
        """Store many vCons in one transaction (one fsync); returns their uuids in order."""
        items = list(vcons)
        prepared = []
        for index, vcon in enumerate(items):
            given = uuids[index] if index < len(uuids) else None
            body = body_of(vcon)
            prepared.append((given or uuid_of(vcon), body, hashlib.sha256(body).hexdigest()))
        now = self.clock()
        with self._tx():
            for uuid, body, digest in prepared:
                self._put_one(uuid, body, digest, now)
        self._notify()
        return [uuid for uuid, _, _ in prepared]

    def _put_one(self, uuid: str, body: bytes, digest: str, now: float) -> None:
        db = self._db
        row = db.execute("SELECT digest, generation, body IS NULL FROM vcons WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            generation = 0
            db.execute(
                "INSERT INTO vcons (uuid, body, digest, generation, put_at) VALUES (?, ?, ?, 0, ?)",
                (uuid, body, digest, now),
            )
        elif row[0] == digest:
            generation = row[1]
            if row[2]:  # all acknowledged and pruned; keep the body again in case a new target needs it
                db.execute("UPDATE vcons SET body = ? WHERE uuid = ?", (body, uuid))
        else:
            generation = row[1] + 1
            db.execute(
                "UPDATE vcons SET body = ?, digest = ?, generation = ?, put_at = ? WHERE uuid = ?",
                (body, digest, generation, now, uuid),
            )
            db.execute(
                "UPDATE deliveries SET state = 'pending', generation = ?, attempts = 0, next_at = ?,"
                " status = NULL, error = NULL, response = NULL, done_at = NULL WHERE uuid = ?",
                (generation, now, uuid),
            )
        db.executemany(
            "INSERT OR IGNORE INTO deliveries (uuid, target, state, generation, next_at)"
            " VALUES (?, ?, 'pending', ?, ?)",
            [(uuid, target.key, generation, now) for target in self.targets],
        )
        if row is not None and row[0] == digest:
            self._maybe_prune(uuid)

    def _maybe_prune(self, uuid: str) -> None:
        left = self._db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE uuid = ? AND state != 'delivered'", (uuid,)
        ).fetchone()[0]
        if left == 0:
            self._db.execute("UPDATE vcons SET body = NULL WHERE uuid = ?", (uuid,))

    def status(self) -> dict[str, TargetCounts]:
        """Counts per target key (every target ever used with this spool), secret-free."""
        with self._lock:
            rows = self._db.execute(
                "SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state"
            ).fetchall()
            known = [key for (key,) in self._db.execute("SELECT key FROM targets ORDER BY key")]
        counts: dict[str, dict[str, int]] = {key: {} for key in known}
        for key, state, count in rows:
            counts.setdefault(key, {})[state] = count
        return {key: TargetCounts(**value) for key, value in counts.items()}

    def dead_letters(self, target: str | None = None) -> list[dict[str, Any]]:
        """Dead rows with the upstream's status, our error text and its response body."""
        query = "SELECT uuid, target, status, error, response, attempts FROM deliveries WHERE state = 'dead'"
        params: tuple[str, ...] = ()
        if target is not None:
            query += " AND target = ?"
            params = (target,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY uuid", params).fetchall()
        names = ("uuid", "target", "status", "error", "response", "attempts")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def retry_dead(self) -> int:
        """Move every dead row back to pending (attempts reset); returns how many."""
        with self._tx():
            cursor = self._db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?, status = NULL,"
                " error = NULL, response = NULL WHERE state = 'dead'",
                (self.clock(),),
            )
        self._notify()
        return cursor.rowcount

    def expedite(self) -> int:
        """Make every pending row of this outbox's targets due now (``outbox flush``: an operator asking
        for delivery now overrides backoff). Returns how many rows."""
        keys = [target.key for target in self.targets]
        if not keys:
            return 0
        marks = ",".join("?" * len(keys))
        with self._tx():
            cursor = self._db.execute(
                f"UPDATE deliveries SET next_at = ? WHERE state = 'pending' AND next_at > ? AND target IN ({marks})",
                (self.clock(), self.clock(), *keys),
            )
        return cursor.rowcount

    def metrics(self) -> dict[str, int]:
        """Counters since start: delivered, failed_attempts, dead."""
        return {"delivered": self.delivered, "failed_attempts": self.failed_attempts, "dead": self.dead}

    def pending_count(self) -> int:
        """Pending rows for this outbox's targets."""
        keys = [target.key for target in self.targets]
        if not keys:
            return 0
        marks = ",".join("?" * len(keys))
        with self._lock:
            return int(
                self._db.execute(
                    f"SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND target IN ({marks})", keys
                ).fetchone()[0]
            )

    def deadline_in(self, seconds: float) -> float:
        """A ``deadline`` for :meth:`deliver`, ``seconds`` from now on this outbox's clock."""
        return self.clock() + seconds

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ leases

    def _release_dead_leases(self) -> None:
        with self._lock:
            owners = [
                owner
                for (owner,) in self._db.execute(
                    "SELECT DISTINCT lease_owner FROM deliveries WHERE lease_owner IS NOT NULL"
                )
            ]
        gone = [owner for owner in owners if owner != self._owner and not _owner_alive(owner)]
        if gone:
            with self._tx():
                self._db.executemany(
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                    [(owner,) for owner in gone],
                )

    def _claim(self, target: Target, limit: int) -> list[str]:
        now = self.clock()
        if now - self._last_lease_sweep > POLL_INTERVAL * 5:
            self._last_lease_sweep = now
            self._release_dead_leases()
        with self._tx():
            uuids = [
                uuid
                for (uuid,) in self._db.execute(
                    "SELECT uuid FROM deliveries WHERE target = ? AND state = 'pending' AND next_at <= ?"
                    " AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at, rowid LIMIT ?",
                    (target.key, now, now, limit),
                )
            ]
            self._db.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE uuid = ? AND target = ?",
                [(self._owner, now + target.timeout + LEASE_MARGIN, uuid, target.key) for uuid in uuids],
            )
        return uuids

    def _next_due(self, target: Target) -> float | None:
        """When the earliest pending row of ``target`` becomes claimable (None when none is pending)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(MAX(next_at, COALESCE(lease_until, 0))) FROM deliveries"
                " WHERE target = ? AND state = 'pending'",
                (target.key,),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def _load(self, uuid: str) -> tuple[bytes, int] | None:
        with self._lock:
            row = self._db.execute("SELECT body, generation FROM vcons WHERE uuid = ?", (uuid,)).fetchone()
        if row is None or row[0] is None:
            return None
        return bytes(row[0]), int(row[1])

    def _release(self, uuid: str, target: Target) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
                " WHERE uuid = ? AND target = ? AND lease_owner = ?",
                (uuid, target.key, self._owner),
            )

    # ------------------------------------------------------------------ outcomes

    def _mark_delivered(self, uuid: str, target: Target, generation: int) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, done_at = ?,"
                " status = NULL, error = NULL, response = NULL, lease_owner = NULL, lease_until = NULL"
                " WHERE uuid = ? AND target = ? AND generation = ? AND state = 'pending'",
                (self.clock(), uuid, target.key, generation),
            )
            self._db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
                " WHERE uuid = ? AND target = ? AND lease_owner = ?",
                (uuid, target.key, self._owner),
            )
            self._maybe_prune(uuid)
        self.delivered += 1

    def _mark_failed(self, uuid: str, target: Target, generation: int, exc: DeliveryError) -> bool:
        """Record a failed attempt; returns True when the row went dead."""
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM deliveries WHERE uuid = ? AND target = ?", (uuid, target.key)
            ).fetchone()
        attempts = (row[0] if row else 0) + 1
        status = getattr(exc, "status", None)
        dead = isinstance(exc, PermanentDeliveryError) or (
            self.max_attempts is not None and attempts >= self.max_attempts
        )
        now = self.clock()
        delay = 0.0 if dead else self._backoff(attempts, exc)
        response = exc.body if isinstance(exc, PermanentDeliveryError) else None
        with self._tx():
            self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, status = ?, error = ?,"
                " response = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE uuid = ? AND target = ? AND generation = ? AND state = 'pending'",
                ("dead" if dead else "pending", attempts, now + delay, status, str(exc), response,
                 uuid, target.key, generation),
            )
            self._db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
                " WHERE uuid = ? AND target = ? AND lease_owner = ?",
                (uuid, target.key, self._owner),
            )
        self.failed_attempts += 1
        if dead:
            self.dead += 1
            log.warning(
                "delivery.dead",
                uuid=uuid,
                target=target.key,
                status=status,
                error=str(exc),
                attempts=attempts,
                response=(response or "")[:200],
            )
        else:
            log.info(
                "delivery.retry", uuid=uuid, target=target.key, status=status, error=str(exc),
                attempts=attempts, delay=round(delay, 3),
            )
        return dead

    def _backoff(self, attempts: int, exc: DeliveryError) -> float:
        """Seconds until the next attempt: the upstream's Retry-After when given, else exponential
        backoff with equal jitter (half fixed, half random) so a recovering upstream is not stampeded."""
        if isinstance(exc, RetryableDeliveryError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), RETRY_AFTER_CAP)
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempts - 1, 30))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    # ------------------------------------------------------------------ the loop

    def _notify(self) -> None:
        loop, event = self._loop, self._wakeup
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def deliver(self, *, until_empty: bool = True, deadline: float | None = None) -> FlushResult:
        """Deliver pending rows of this outbox's targets.

        ``until_empty=False`` makes one pass over what is due now; ``until_empty=True`` also waits out
        backoffs until nothing is pending. ``deadline`` is an absolute time on :attr:`clock` (see
        :meth:`deadline_in`): at it, deliveries in flight are abandoned (they stay pending) and the call
        returns. Never raises for delivery failures; they are in the result and in :meth:`status`."""
        before = self.metrics()
        await self._pump(until_empty=until_empty, deadline=deadline, stop=None)
        after = self.metrics()
        return FlushResult(
            delivered=after["delivered"] - before["delivered"],
            failed_attempts=after["failed_attempts"] - before["failed_attempts"],
            dead=after["dead"] - before["dead"],
            pending=self.pending_count(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """The daemon loop: deliver forever (also rows put by other processes) until ``stop`` is set."""
        await self._pump(until_empty=False, deadline=None, stop=stop)

    async def _pump(self, *, until_empty: bool, deadline: float | None, stop: asyncio.Event | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        sinks = [self._sink_factory(target) for target in self.targets]
        try:
            await asyncio.gather(
                *(self._target_loop(sink, until_empty=until_empty, deadline=deadline, stop=stop)
                  for sink in sinks)
            )
        finally:
            for sink in sinks:
                with contextlib.suppress(Exception):
                    await sink.aclose()
            self._loop = None
            self._wakeup = None

    async def _target_loop(
        self, sink: Sink, *, until_empty: bool, deadline: float | None, stop: asyncio.Event | None
    ) -> None:
        target = sink.target
        limit = max(1, min(self.concurrency, target.concurrency))
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                now = self.clock()
                if (deadline is not None and now >= deadline) or (stop is not None and stop.is_set()):
                    return
                free = limit - len(inflight)
                claimed = self._claim(target, free) if free > 0 else []
                for uuid in claimed:
                    inflight.add(asyncio.create_task(self._attempt(sink, uuid)))
                if claimed and len(inflight) < limit:
                    continue  # there may be more due rows: claim again before waiting
                next_due = self._next_due(target)
                if not inflight:
                    if next_due is None and stop is None:
                        return  # nothing pending for this target
                    if next_due is not None and next_due > now and stop is None and not until_empty:
                        return  # one pass: what is due has been tried
                    wait = POLL_INTERVAL if next_due is None else max(0.0, next_due - now)
                    if stop is not None:
                        wait = min(wait, POLL_INTERVAL)
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - now))
                    await self._idle(wait, stop)
                    continue
                wait = POLL_INTERVAL if next_due is None else max(0.01, min(POLL_INTERVAL, next_due - now))
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - now))
                _, inflight = await asyncio.wait(inflight, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _idle(self, seconds: float, stop: asyncio.Event | None) -> None:
        """Wait ``seconds`` (through the injectable sleep), waking early on a put or on ``stop``."""
        if stop is None:
            await self._sleep(seconds)
            return
        assert self._wakeup is not None
        self._wakeup.clear()
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(self._sleep(seconds)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _attempt(self, sink: Sink, uuid: str) -> None:
        target = sink.target
        loaded = self._load(uuid)
        if loaded is None:  # pruned meanwhile (acknowledged through another process)
            self._release(uuid, target)
            return
        body, generation = loaded
        try:
            await sink.deliver(uuid, body)
        except DeliveryError as exc:
            self._mark_failed(uuid, target, generation, exc)
            return
        except asyncio.CancelledError:
            # Abandoned at a deadline: the upstream may or may not have it; stays pending (at least once).
            self._release(uuid, target)
            raise
        self._mark_delivered(uuid, target, generation)
        log.debug("delivery.acknowledged", uuid=uuid, target=target.key)


def load_targets(spool_dir: Path, *, token: str | None = None) -> list[Target]:
    """The targets recorded in a spool (secret-free specs; tokens are re-resolved from ``token``,
    ``token_env`` or ``VCON_CAPTURE_TOKEN``). Empty when the spool does not exist yet."""
    path = Path(spool_dir) / DB_NAME
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=30.0)
    try:
        rows = db.execute("SELECT spec FROM targets ORDER BY key").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        db.close()
    return [parse_target(json.loads(spec), token=token) for (spec,) in rows]
