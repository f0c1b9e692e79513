"""The default store: diskcache (SQLite + files) in ``cache.dir``, called off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import diskcache

from ..policy import Sighting
from ..traffic import Traffic
from . import CorruptStoreError, Entry, Note, Seen, StoreError, StoreWriteError
from .diskmeta import Meta
from .hot import HotRecords
from .limits import MAX_VARIANTS
from .record import RecordError, decode, encode

WAL_LIMIT = 16 * 1024**2  # a write-ahead log file is cut back to this after a checkpoint
# A checkpoint's fsync stalls the misses being stored at that moment, so the write-ahead
# logs are folded in about as often as SQLite's own auto-checkpoint would (1,000 pages; an
# entry writes about 7), or after a while, rather than every second whatever was written.
CHECKPOINT_PUTS = 150
CHECKPOINT_EVERY = 10.0  # seconds
HOT_BYTES = 8 * 1024**2  # memory for the decoded records of recently read keys
DECODED = 640  # about what an entry takes in memory beyond its stored bytes
T = TypeVar("T")


def checkpoint_due(puts: int, elapsed: float) -> bool:
    """Whether to fold the write-ahead logs in, ``puts`` entries and ``elapsed`` seconds
    after the last time."""
    return puts >= CHECKPOINT_PUTS or elapsed >= CHECKPOINT_EVERY


def _corrupt(path: Path, exc: Exception) -> str:
    return (
        f"cache file {path / 'cache.db'} (or one beside it) is unreadable ({exc}); stop "
        f"the proxy and move the directory {path} aside (or delete it) to start with an "
        "empty cache; recordings exported with `seedproxy export` can be imported again"
    )


# Why a write fails when the store is whole but cannot grow or change: no space (or
# quota), a read-only file system, permissions; SQLite's own codes for the same. diskcache
# reports a value file it could not create (its directory refused: read-only, full) as
# ENOENT; a read of a missing value file is a miss to it, never this error.
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EPERM, errno.EACCES, errno.ENOENT}
)
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_PERM = 13, 8, 3


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` says the cache directory cannot be written (not that it is damaged)."""
    if isinstance(exc, OSError):
        return exc.errno in _WRITE_ERRNOS
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_PERM)


def _open(path: Path, **settings: Any) -> diskcache.Cache:
    try:
        return diskcache.Cache(str(path), **settings)
    except sqlite3.DatabaseError as exc:
        raise CorruptStoreError(_corrupt(path, exc)) from None
    except OSError as exc:
        raise StoreError(f"cache.dir: cannot open {path}: {exc}") from None


class DiskStore:
    """Entries, registry, events and counters under one directory, safe across processes."""

    def __init__(
        self, directory: Path, size_limit: int = 4 * 1024**3, traffic: Traffic | None = None
    ) -> None:
        self.directory = directory
        # What the flow carries: a put while others wait goes to a thread, and folding the
        # write-ahead logs waits for the moment a request has just gone upstream.
        self._traffic = traffic or Traffic()
        # Reads never write: 'least-recently-stored' keeps a hit a pure SELECT.
        # Checkpoints (copying the WAL into the database) would land on whichever write
        # crosses the threshold; they run from checkpoint() instead, when due.
        # Likewise eviction (three more queries in every write): checkpoint() culls.
        wal = {
            "sqlite_wal_autocheckpoint": 0,
            "sqlite_journal_size_limit": WAL_LIMIT,
            "cull_limit": 0,
            # bounded memory per connection: 4 MiB of page cache, 8 MiB mapped
            "sqlite_cache_size": 1024,
            "sqlite_mmap_size": 8 * 1024**2,
        }
        self._entries = _open(
            directory / "entries",
            size_limit=size_limit,
            eviction_policy="least-recently-stored",
            **wal,
        )
        # The event loop's own connection to the entries, which never waits for a lock: a
        # read costs less than a hop to the pool and back; if it must wait, the pool reads.
        self._now = _open(
            directory / "entries",
            timeout=0,
            size_limit=size_limit,
            eviction_policy="least-recently-stored",
            **wal,
        )
        # Hot keys are served from memory while no connection (this process's others, or
        # another process's) has committed to the entries: SQLite's data_version, asked of
        # a connection that never writes, changes with every such commit.
        self._watch = sqlite3.connect(
            directory / "entries" / "cache.db", isolation_level=None, check_same_thread=False
        )
        self._hot = HotRecords(HOT_BYTES)
        # large values being read and decoded in the pool, one read a key however many
        # clients ask at once (a key only while its read runs)
        self._reading: dict[str, asyncio.Future[tuple[list[Entry], int]]] = {}
        self._meta = Meta(
            _open(directory / "meta", eviction_policy="none", **wal),
            {
                kind: _open(directory / "events" / kind, eviction_policy="none")
                for kind in ("drift", "fingerprint_change")
            },
        )
        # The loop's never-waiting connection to the meta store, for the one small read on
        # a request's path: a replay miss's recent keys (a pool hop cost a third of it).
        self._meta_now = _open(directory / "meta", timeout=0, eviction_policy="none", **wal)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="seedproxy-disk")
        self._checkpointers: list[sqlite3.Connection] = []  # one job at a time uses them
        self._puts = 0  # entries this process stored since its last checkpoint
        self._checkpointed = time.monotonic()

    def _store_error(self, exc: sqlite3.DatabaseError | OSError) -> StoreError:
        """SQLite and file errors as the store's own: one that refuses a write says so (the
        store reads on, degraded); a damaged file names the recovery."""
        if refuses_writes(exc):
            return StoreWriteError(f"cache.dir {self.directory} cannot be written: {exc}")
        if isinstance(exc, sqlite3.DatabaseError):
            return CorruptStoreError(_corrupt(self.directory, exc))
        return StoreError(f"cache.dir {self.directory}: {exc}")  # a large value is a file

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._store_error(exc) from None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._errors():
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _on_loop(
        self, fn: Callable[..., T], *args: Any, now: diskcache.Cache | None = None
    ) -> T:
        """``fn(*args, cache=now)`` on one of the event loop's never-waiting connections
        (by default the entries'); in the pool, on a connection that waits, if another
        writer holds the lock."""
        with self._errors():
            try:
                return fn(*args, cache=self._now if now is None else now)
            except (diskcache.Timeout, sqlite3.OperationalError):
                pass
        return await self._run(fn, *args)

    @staticmethod
    def _decoded(key: str, raw: bytes | None) -> list[Entry]:
        if raw is None:
            return []
        try:
            return decode(key, raw)
        except RecordError:
            return []  # never serve a damaged record; the next store overwrites it

    def _read(self, key: str, cache: diskcache.Cache | None = None) -> list[Entry]:
        # not ``cache or ...``: a Cache's truth value is its length, one more query
        return self._decoded(key, (self._entries if cache is None else cache).get(key))

    async def variants(self, key: str) -> list[Entry]:
        # On the event loop: in WAL mode a read does not wait for writers and comes from
        # SQLite's page cache; a value over ``disk_min_file_size`` (32 KiB) is a file,
        # opened here and read and decoded in the pool, so a large entry (a 3 MB answer
        # that 40 clients ask for at once) costs the loop nothing that grows with it.
        # A hot key's records, unchanged since, come from memory without SQL or decoding.
        # (Errors translated inline, not by _errors(): its context manager costs a hit 2%.)
        version = None
        try:
            if not self._hot.first_read(key):  # kept from its second read on
                (version,) = self._watch.execute("PRAGMA data_version").fetchone()
                hot = self._hot.get(key, version)
                if hot is not None:
                    return hot
            raw = self._now.get(key, read=True)  # read after the version: never older
        except (diskcache.Timeout, sqlite3.OperationalError):
            return await self._run(self._read, key)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._store_error(exc) from None
        if isinstance(raw, bytes) or raw is None:
            entries = self._decoded(key, raw)
            size = len(raw or b"")
        else:
            entries, size = await self._slurp_once(key, raw)
        if entries and version is not None:
            self._hot.put(key, entries, size + DECODED * len(entries))
        return entries

    async def _slurp_once(self, key: str, file: BinaryIO) -> tuple[list[Entry], int]:
        """A large value read and decoded in the pool, shared by every request for ``key``
        that arrives while it is read: forty clients asking for a 3 MB entry at once hold
        one copy of it, not forty."""
        pending = self._reading.get(key)
        if pending is not None:
            file.close()
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._run(self._slurped, key, file))
        self._reading[key] = task
        task.add_done_callback(
            lambda t: self._reading.pop(key, None) if self._reading.get(key) is t else None
        )
        return await asyncio.shield(task)

    def _slurped(self, key: str, file: BinaryIO) -> tuple[list[Entry], int]:
        with file:
            raw = file.read()
        return self._decoded(key, raw), len(raw)

    def _put(self, entry: Entry, cache: diskcache.Cache | None = None) -> None:
        cache = self._entries if cache is None else cache
        if cache.add(entry.key, encode([entry])):  # a new key (most misses): no merging read
            return
        with cache.transact():
            kept = [e for e in self._read(entry.key, cache) if e.fingerprint != entry.fingerprint]
            cache.set(entry.key, encode([entry, *kept][:MAX_VARIANTS]))

    async def put(self, entry: Entry) -> None:
        self._puts += 1
        if self._traffic.busy:  # the loop has other requests to serve: a thread writes
            return await self._run(self._put, entry)
        # nothing else to do: no hop to a thread and back (a third of a miss's overhead)
        await self._on_loop(self._put, entry)

    async def recent(self, endpoint: str, model: str) -> list[str]:
        # at most MAX_RECENT keys: on the loop, as a hit reads its entry
        return await self._on_loop(self._meta.recent, endpoint, model, now=self._meta_now)

    async def keys(self) -> list[str]:
        return await self._run(lambda: [k for k in self._entries.iterkeys() if isinstance(k, str)])

    def _delete(self, key: str, fingerprints: set[str | None] | None) -> int:
        with self._entries.transact():
            variants = self._read(key)
            kept = (
                []
                if fingerprints is None
                else [e for e in variants if e.fingerprint not in fingerprints]
            )
            if kept:
                self._entries.set(key, encode(kept))
            else:
                self._entries.delete(key)
        return len(variants) - len(kept)

    async def delete(self, key: str, fingerprints: set[str | None] | None = None) -> int:
        return await self._run(self._delete, key, fingerprints)

    async def models(self) -> list[str]:
        return await self._run(self._meta.models)

    async def sightings(self, model: str) -> dict[str | None, Sighting]:
        return await self._run(self._meta.sightings, model)  # memoized by the registry

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        return await self._run(self._meta.note, notes)

    async def add_event(self, event: Mapping[str, Any]) -> None:
        await self._run(self._meta.add_event, event)

    async def events(self, kind: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return await self._run(self._meta.events, kind, limit, offset)

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        await self._run(self._meta.add_counters, deltas)

    async def counters(self) -> dict[str, int]:
        return await self._run(self._meta.counters)

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        return await self._run(self._meta.lock, key, token, ttl)

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        return await self._run(self._meta.extend, key, token, ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self._run(self._meta.unlock, key, token)

    async def locked(self, key: str) -> bool:
        return await self._run(self._meta.locked, key)

    async def ping(self) -> None:
        await self._run(self._meta.locked, "ping")

    async def start(self) -> None:
        """Nothing to connect: the files were opened (and checked) in the constructor."""

    def _checkpoint(self, fold: bool) -> None:
        self._entries.cull(retry=True)  # the oldest entries go while over cache.size_limit
        if not fold:
            return
        if not self._checkpointers:
            for directory in (self._entries.directory, self._meta.directory):
                connection = sqlite3.connect(directory + "/cache.db", check_same_thread=False)
                connection.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
                self._checkpointers.append(connection)
        for connection in self._checkpointers:
            _, frames, folded = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames and folded == frames:
                # The first write after a complete checkpoint starts the log over, syncing
                # its header and the directory: this one, not the loop's next put.
                (n,) = connection.execute("PRAGMA user_version").fetchone()
                connection.execute(f"PRAGMA user_version = {(n + 1) % 2**31}")

    async def checkpoint(self) -> None:
        """Evict down to the size limit; when due, fold the write-ahead logs into the
        databases, without waiting for readers, once a request has just gone upstream, so
        that no answer is expected meanwhile (its syncs slow whatever runs meanwhile)."""
        fold = checkpoint_due(self._puts, time.monotonic() - self._checkpointed)
        if fold:
            await self._traffic.quiet_moment()
        puts, now = self._puts, time.monotonic()
        await self._run(self._checkpoint, fold)  # one hop to the pool, as every second
        if fold:
            self._puts -= puts
            self._checkpointed = now

    async def size(self) -> tuple[int, int]:
        return await self._run(lambda: (len(self._entries), self._entries.volume()))

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        for connection in self._checkpointers:
            connection.close()
        self._entries.close()
        self._now.close()
        self._watch.close()
        self._meta.close()
        self._meta_now.close()
