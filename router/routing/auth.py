"""Client authentication: which bearer tokens may call flashpro. Pure: no I/O.

flashpro's own client keys live in the policy as sha256 hex digests (`keys:`) or by the name of
an env var holding one (`key_env:`); each maps to a group (its tenant profile). With
`auth: {required: true}` any other token, or none, is refused with 401. The upstream key is a
different secret: it is never compared, echoed or logged here.
"""

from __future__ import annotations

from router.errors import Unauthorized
from router.routing.callers import Caller, key_digest
from router.routing.policy import Policy

__all__ = ["authorize", "key_digest"]


def authorize(policy: Policy, caller: Caller) -> None:
    """Refuse a caller whose key the policy does not know, when the policy requires keys."""
    if not policy.auth.required or caller.group is not None:
        return
    if caller.key is None:
        raise Unauthorized(
            "Missing API key: send a flashpro client key as 'Authorization: Bearer <key>'."
        )
    raise Unauthorized("Incorrect API key provided: this key is not a flashpro client key.")
