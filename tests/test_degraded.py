"""Issue 29, item 5: a store that reads but cannot write is an outage of its own,
``degraded``: reported with its reason on /healthz and stats, logged once when it starts
and once when it ends (only a write that succeeds ends it; reads go on succeeding
meanwhile), and it costs no request. Real conditions, not mocks: a full file system (a
small tmpfs), Redis out of memory under ``noeviction``, a read-only Redis replica."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from redis.exceptions import ReadOnlyError, ResponseError

from proxy.store import disk as disk_store
from proxy.store import redis as redis_store
from tests.conftest import free_port, start_redis
from tests.harness import http
from tests.test_outage import ask, health

DEGRADED = "cache store degraded"
WRITABLE = "cache store writable again"


def lines(logs, text: str) -> int:
    return sum(text in line for line in logs.text.splitlines())


def check_degraded(proxy, logs, reason: str) -> None:
    """Misses answered live and not stored, the stored answer still served, and the
    outage reported: health, stats, one warning."""
    for i in range(5):
        status, headers, raw = ask(proxy, f"while it cannot write {i}")
        assert status == 200 and headers["X-Cache"] == "MISS", raw
    status, headers, raw = ask(proxy, "while it cannot write 0")
    assert status == 200 and headers["X-Cache"] == "MISS", raw  # it was not stored
    assert ask(proxy, "stored before")[1]["X-Cache"] == "HIT"  # a read succeeds...
    state = health(proxy)  # ...and the store is still degraded
    assert state["store"] == "degraded" and reason in state["store_error"], state
    stats = orjson.loads(http(proxy.url, "GET", "/_seedproxy/stats")[2])
    assert stats["store"] == "degraded" and reason in stats["store_error"]
    assert lines(logs, DEGRADED) == 1 and lines(logs, "cache store unavailable") == 0
    assert lines(logs, WRITABLE) == 0


def check_recovered(proxy, logs) -> None:
    assert ask(proxy, "after")[1]["X-Cache"] == "MISS"
    assert ask(proxy, "after")[1]["X-Cache"] == "HIT"
    assert health(proxy) == {"status": "ok", "store": "ok"}
    assert lines(logs, DEGRADED) == 1 and lines(logs, WRITABLE) == 1


# -- disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of this test's own (the tests run as root, in CI too)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs (run as root): {done.stderr.decode()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """A file that takes every byte left on ``directory``'s file system."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_a_full_disk_is_degraded_until_a_write_succeeds(make_proxy, small_disk, logs):
    proxy = make_proxy(cache={"dir": str(small_disk / "cache")})
    assert ask(proxy, "stored before")[1]["X-Cache"] == "MISS"
    filler = fill(small_disk)
    check_degraded(proxy, logs, "cannot be written")
    filler.unlink()  # space again
    check_recovered(proxy, logs)


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EROFS, "Read-only file system"), True),
        (OSError(errno.EACCES, "Permission denied"), True),
        (OSError(errno.ENOENT, "No such file or directory"), True),  # diskcache's way
        (OSError(errno.EIO, "Input/output error"), False),
    ],
)
def test_which_file_errors_refuse_writes(exc, refused):
    assert disk_store.refuses_writes(exc) is refused


def test_which_sqlite_errors_refuse_writes(tmp_path):
    """SQLite's own codes, from a real read-only connection and a damaged file."""
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        readonly.execute("insert into t values (1)")
    assert disk_store.refuses_writes(caught.value)
    readonly.close()
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(path).execute("select * from t")
    assert not disk_store.refuses_writes(caught.value)  # damaged, not full: not degraded


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of this test's own, whose configuration the test may change."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    yield url, client
    client.close()
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_out_of_memory_is_degraded_until_a_write_succeeds(make_proxy, own_redis, logs):
    url, admin = own_redis
    proxy = make_proxy(cache={"backend": "redis", "redis_url": url})
    assert ask(proxy, "stored before")[1]["X-Cache"] == "MISS"
    used = admin.info("memory")["used_memory"]
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(used))  # every write refused from now on
    check_degraded(proxy, logs, "maxmemory")
    admin.config_set("maxmemory", "0")
    check_recovered(proxy, logs)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_a_read_only_redis_replica_is_degraded_until_a_write_succeeds(
    make_proxy, own_redis, tmp_path, logs
):
    url, primary = own_redis
    port = free_port()
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    proc = start_redis(port, replica_dir)
    try:
        writer = make_proxy(cache={"backend": "redis", "redis_url": url})
        assert ask(writer, "stored before")[1]["X-Cache"] == "MISS"
        replica = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        primary_port = primary.connection_pool.connection_kwargs["port"]
        replica.replicaof("127.0.0.1", primary_port)
        while replica.info("replication")["master_link_status"] != "up":
            replica.ping()  # the first sync takes a moment
        proxy = make_proxy(cache={"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"})
        check_degraded(proxy, logs, "read only replica")
        replica.replicaof("NO", "ONE")  # promoted: it takes writes
        check_recovered(proxy, logs)
        replica.close()
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (ReadOnlyError("You can't write against a read only replica."), True),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), True),
        (ResponseError("Command # 2 (SET k v) of pipeline caused error: OOM command not"), True),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (ResponseError("Command # 1 (SET OOM x) of pipeline caused error: WRONGTYPE"), False),
        (redis.ConnectionError("Connection refused"), False),
    ],
)
def test_which_redis_errors_refuse_writes(exc, refused):
    assert redis_store.refuses_writes(exc) is refused


@pytest.fixture
def read_only_later(
    tmp_path: Path,
) -> Iterator[tuple[Path, Callable[[], None], Callable[[], None]]]:
    """A directory that can be made read-only under a running proxy: a read-only bind
    mount of it over itself (files the proxy has open stay writable through their old
    descriptors; every file it creates from then on is refused, as on a read-only file
    system), and made writable again by unmounting it."""
    directory = tmp_path / "cache"
    directory.mkdir()
    mounted: list[bool] = []

    def freeze() -> None:
        for args in (["--bind", directory, directory], ["-o", "remount,ro,bind", directory]):
            done = subprocess.run(["mount", *map(str, args)], capture_output=True)
            if done.returncode:
                pytest.fail(f"cannot bind-mount read-only (run as root): {done.stderr.decode()}")
        mounted.append(True)

    def thaw() -> None:  # lazily: what the proxy opened through it stays open
        subprocess.run(["umount", "-l", str(directory)], check=True)
        mounted.pop()

    yield directory, freeze, thaw
    if mounted:
        subprocess.run(["umount", "-l", str(directory)], check=True)


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_a_read_only_cache_directory_is_degraded(make_proxy, upstream, read_only_later, logs):
    directory, freeze, thaw = read_only_later
    upstream.content_lines = 1500  # about 60 KB: stored as a file of its own
    proxy = make_proxy(cache={"dir": str(directory)})
    assert ask(proxy, "stored before")[1]["X-Cache"] == "MISS"
    freeze()
    check_degraded(proxy, logs, "cannot be written")
    thaw()
    check_recovered(proxy, logs)
