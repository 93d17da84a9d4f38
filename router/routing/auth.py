"""Client authentication: which bearer tokens may call flashpro. Pure: no I/O.

flashpro's own client keys live in the policy as sha256 hex digests (`keys:`) or by the name of
an env var holding one (`key_env:`); each maps to a group (its tenant profile). With
`auth: {required: true}` any other token, or none, is refused with 401, on every endpoint but
/healthz. The monitoring endpoints take the keys of `auth.monitoring_keys` /
`monitoring_key_env` instead (or the client keys, when the policy lists no monitoring key).
The upstream key is a different secret: it is never compared, echoed or logged here.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.errors import Unauthorized
from router.routing.callers import Caller, key_digest
from router.routing.policy import Policy

__all__ = ["authorize", "authorize_client_key", "authorize_monitoring", "key_digest"]

MISSING = "Missing API key: send a flashpro key as 'Authorization: Bearer <key>'."


def _env_digests(names: list[str] | Mapping[str, str], environ: Mapping[str, str]) -> set[str]:
    return {key_digest(secret) for name in names if (secret := environ.get(name))}


def is_client_key(policy: Policy, key: str, environ: Mapping[str, str]) -> bool:
    return key in policy.keys or key in _env_digests(policy.key_env, environ)


def monitoring_digests(policy: Policy, environ: Mapping[str, str]) -> set[str]:
    auth = policy.auth
    return set(auth.monitoring_keys) | _env_digests(auth.monitoring_key_env, environ)


def authorize_client_key(policy: Policy, key: str | None, environ: Mapping[str, str]) -> None:
    """The client endpoints besides chat (/v1/route, /v1/feedback): a client key when the
    policy requires keys."""
    if not policy.auth.required:
        return
    if key is None:
        raise Unauthorized(MISSING)
    if not is_client_key(policy, key, environ):
        raise Unauthorized("Incorrect API key provided: this key is not a flashpro client key.")


def authorize_monitoring(
    policy: Policy, key: str | None, environ: Mapping[str, str], clients_too: bool = False
) -> None:
    """The monitoring endpoints: a monitoring key when the policy requires keys (a client key
    as well when the policy lists no monitoring key, or `clients_too`)."""
    if not policy.auth.required:
        return
    if key is None:
        raise Unauthorized(MISSING)
    monitors = monitoring_digests(policy, environ)
    if key in monitors:
        return
    if (clients_too or not monitors) and is_client_key(policy, key, environ):
        return
    raise Unauthorized("Incorrect API key provided: this key may not read this endpoint.")


def authorize(policy: Policy, caller: Caller) -> None:
    """Refuse a caller whose key the policy does not know, when the policy requires keys."""
    if not policy.auth.required or caller.group is not None:
        return
    if caller.key is None:
        raise Unauthorized(
            "Missing API key: send a flashpro client key as 'Authorization: Bearer <key>'."
        )
    raise Unauthorized("Incorrect API key provided: this key is not a flashpro client key.")
