"""Read a REDIS_URL: one server, a Sentinel-watched master, or a Cluster. Pure: no I/O.

    redis://[user:password@]host:6379/0             one server (also rediss://, unix://)
    redis+sentinel://[user:password@]s1:26379,s2:26379/mymaster/0
    sentinel://...                                  the same
    redis+cluster://[user:password@]n1:7000,n2:7001 a cluster (db is always 0)

A sentinel URL's password is the master's; `?sentinel_password=` sets the Sentinels' own. A
`+tls` scheme suffix (`rediss+sentinel://`, `rediss+cluster://`) connects with TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Kind = Literal["single", "sentinel", "cluster"]

_SENTINEL_SCHEMES = {"redis+sentinel": False, "sentinel": False, "rediss+sentinel": True}
_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Kind
    url: str  # as given; `single` URLs go to redis-py's own from_url
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # the Sentinel master's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """What a REDIS_URL names; ValueError when a sentinel or cluster URL is incomplete."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SENTINEL_SCHEMES and scheme not in _CLUSTER_SCHEMES:
        return RedisTarget("single", url)
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    default_port = 26379 if scheme in _SENTINEL_SCHEMES else 6379
    hosts = tuple(_host(item, default_port) for item in hostlist.split(",") if item)
    if not hosts:
        raise ValueError(f"no hosts in {scheme} URL")
    query = parse_qs(parts.query)
    user, secret = unquote(username) or None, unquote(password) or None
    if scheme in _CLUSTER_SCHEMES:
        tls = _CLUSTER_SCHEMES[scheme]
        return RedisTarget("cluster", url, hosts, username=user, password=secret, tls=tls)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a sentinel URL names the master: redis+sentinel://host:26379/mymaster")
    db = int(path[1]) if len(path) > 1 else int(query.get("db", ["0"])[0])
    return RedisTarget(
        "sentinel",
        url,
        hosts,
        service=unquote(path[0]),
        db=db,
        username=user,
        password=secret,
        sentinel_password=query.get("sentinel_password", [None])[0],
        tls=_SENTINEL_SCHEMES[scheme],
    )


def _host(item: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = item.rpartition(":")
    return (host, int(port)) if sep else (item, default_port)
