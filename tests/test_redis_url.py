"""REDIS_URL forms: one server, Sentinel, Cluster (parsing is pure; clients are built, and a real
Sentinel in front of a real redis-server serves the cache)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from router.state.cache import RedisCache
from router.state.redis_url import RedisTarget, parse_redis_url
from router.state.store import connect_redis
from tests.conftest import RedisServer, free_port, wait_until


def test_plain_urls_are_left_to_redis_py() -> None:
    for url in ("redis://localhost:6379/0", "rediss://u:p@host/2", "unix:///tmp/redis.sock"):
        assert parse_redis_url(url) == RedisTarget("single", url)


@pytest.mark.parametrize("scheme", ["redis+sentinel", "sentinel"])
def test_sentinel_urls_name_hosts_master_and_db(scheme: str) -> None:
    url = f"{scheme}://user:p%40ss@s1:26379,s2:26380,s3/mymaster/2?sentinel_password=sp"
    target = parse_redis_url(url)
    assert target.kind == "sentinel"
    assert target.hosts == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (target.service, target.db) == ("mymaster", 2)
    assert (target.username, target.password, target.sentinel_password) == ("user", "p@ss", "sp")
    assert not target.tls


def test_sentinel_db_defaults_to_zero_and_tls_scheme() -> None:
    target = parse_redis_url("rediss+sentinel://[::1]:26379/main")
    assert target.hosts == (("::1", 26379),)
    assert (target.service, target.db, target.tls, target.password) == ("main", 0, True, None)


def test_cluster_urls_list_startup_nodes() -> None:
    target = parse_redis_url("redis+cluster://:secret@n1:7000,n2:7001,n3")
    assert target.kind == "cluster"
    assert target.hosts == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert (target.username, target.password) == (None, "secret")


@pytest.mark.parametrize("url", ["redis+sentinel://s1:26379", "redis+cluster://", "sentinel:///m"])
def test_incomplete_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)


async def test_each_url_form_builds_its_client() -> None:
    single = connect_redis("redis://127.0.0.1:1/0", 0.05)
    sentinel = connect_redis("redis+sentinel://127.0.0.1:1/mymaster", 0.05)
    cluster = connect_redis("redis+cluster://127.0.0.1:1", 0.05)
    assert type(single) is redis.asyncio.Redis
    assert type(sentinel) is redis.asyncio.Redis
    assert "Sentinel" in type(sentinel.connection_pool).__name__
    assert isinstance(cluster, redis.asyncio.RedisCluster)
    for client in (single, sentinel, cluster):
        await client.aclose()


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real Sentinel watching the session's redis-server as master `mymaster`."""
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
    )
    process = subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), what="redis sentinel")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def test_cache_through_a_real_sentinel(sentinel: int) -> None:
    cache = RedisCache(f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/0", timeout_s=1.0)
    key = f"flashpro:test:sentinel:{time.time_ns()}"
    await cache.put(key, b"value", 10)
    assert await cache.get_many([key, key + ":absent"]) == [b"value", None]
    assert not cache.down
    await cache.aclose()


async def test_budgets_accept_a_sentinel_url_but_not_a_cluster() -> None:
    from router.state.store import connect

    client = connect("redis+sentinel://127.0.0.1:1/mymaster")
    assert "Sentinel" in type(client.connection_pool).__name__
    await client.aclose()
    with pytest.raises(ValueError, match="Cluster"):
        connect("redis+cluster://127.0.0.1:1")
