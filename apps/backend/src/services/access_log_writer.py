"""Group commit of the access log, in the process: concurrent requests' entries are
written together, one statement and one commit for all of them, and each request still
waits for its own entry's commit before its answer leaves.

How. The app has one AccessLogWriter (made with its Database, src/api/app.py). A
request calls `write(entry)`: the entry goes into the writer's queue with a future, and
the request awaits the future. One flusher task at a time takes everything queued (at
most MAX_BATCH entries), writes it with AccessLogService.record_many (one statement,
its own transaction: one commit, one WAL flush for the batch) and resolves the futures;
meanwhile new entries queue up for the next batch. Nothing waits on purpose: an entry
that finds no flush in flight starts one at once, so a lone request pays no delay,
and under load a batch is whatever arrived during the previous flush. When the queue is
empty the flusher ends (no task outlives its work; the next entry starts another).

The guarantee is the single writer's: a request's future is resolved only after the
statement that holds its entry has committed, so an answer that leaves has its entry.
- A batch the database refuses (a constraint, a trigger, one organization's entry that
  cannot be written) is written again entry by entry, each its own statement, so only
  the entries that truly cannot be written fail. A batch that fails because the database
  is unreachable or busy fails as a whole (trying 500 entries one by one against a
  database that is down would only hold the requests longer).
- A lost connection is retried by run_statement; an entry's id was chosen before the
  first attempt and careteam_record_access skips an id already written, so a retry
  never writes an entry twice.
- A failed entry's request gets AccessLogUnavailable (the middleware answers 503
  access_log_unavailable). So does every waiting request when the flusher is cancelled
  (the app shutting down: `close` lets a flush in flight finish for a few seconds, then
  cancels it), so none hangs; an entry cut off that way may or may not have committed,
  and is at most once in the log.

There is no `synchronous_commit = off` anywhere: an acknowledged entry survives a
PostgreSQL crash as any committed row does.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from src.services.access_log_service import AccessEntry, AccessLogService
from src.services.errors import AccessLogUnavailable, DatabaseBusy, DatabaseUnavailable

logger = logging.getLogger(__name__)

MAX_BATCH = 500
CLOSE_DRAIN_S = 5.0

_Waiting = tuple[AccessEntry, "asyncio.Future[None]"]


class AccessLogWriter:
    """One per app and database: see the module docstring. `batches`, `entries` and
    `split_batches` count what it did (a split batch: one the database refused, written
    again entry by entry)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, max_batch: int = MAX_BATCH
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.entries = 0
        self.split_batches = 0

    async def write(self, entry: AccessEntry) -> None:
        """Return once `entry` has committed; raise AccessLogUnavailable (caused by the
        service's database error, if any) if it could not be written."""
        if self._closed:
            raise AccessLogUnavailable("the access log writer is closed (shutting down)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((entry, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush_queued(), name="access-log-writer")
        await future

    async def close(self, drain_s: float = CLOSE_DRAIN_S) -> None:
        """Stop: let a flush in flight finish (at most `drain_s`), then cancel it; every
        entry still waiting fails with AccessLogUnavailable. Later writes fail too."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            if flusher.get_loop() is asyncio.get_running_loop():
                with suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(flusher), drain_s)
                flusher.cancel()
                with suppress(asyncio.CancelledError):
                    await flusher
        self._fail(self._queue, "the access log writer closed before this entry was written")
        self._queue.clear()

    async def _flush_queued(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._write(batch)
                batch = []
        except BaseException as err:
            # Cancelled (the app shutting down), or a bug: no request waits forever.
            self._fail(batch + self._queue, "the access log writer stopped mid-flush")
            self._queue.clear()
            if isinstance(err, Exception):
                logger.exception("access log writer failed", extra={"event": "access_log_bug"})
                return
            raise

    async def _write(self, batch: list[_Waiting]) -> None:
        entries = [entry for entry, _ in batch]
        self.batches += 1
        try:
            async with self._sessionmaker() as db:
                if len(entries) == 1:
                    await AccessLogService.record(db=db, entry=entries[0])
                else:
                    await AccessLogService.record_many(db=db, entries=entries)
        except Exception as err:
            whole = isinstance(err, DatabaseUnavailable | DatabaseBusy)
            if len(batch) == 1 or whole:
                logger.error(
                    "access log: a batch of %d entries not written (%s)",
                    len(batch),
                    type(err).__name__,
                    extra={"event": "access_log_batch_failed", "entries": len(batch)},
                )
                self._fail(batch, f"the access log could not write it ({type(err).__name__})", err)
                return
            self.split_batches += 1
            logger.warning(
                "access log: a batch of %d entries refused (%s); writing them one by one",
                len(batch),
                type(err).__name__,
                extra={"event": "access_log_batch_split", "entries": len(batch)},
            )
            for waiting in batch:
                await self._write([waiting])
            return
        self.entries += len(batch)
        for _, future in batch:
            _settle(future, None)

    @staticmethod
    def _fail(waiting: list[_Waiting], why: str, cause: BaseException | None = None) -> None:
        """Each waiting request gets an AccessLogUnavailable of its own (one exception
        raised in many tasks would grow one traceback), caused by `cause`."""
        for _, future in waiting:
            error = AccessLogUnavailable(why)
            error.__cause__ = cause
            _settle(future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolve a request's future, unless its request has stopped waiting."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
