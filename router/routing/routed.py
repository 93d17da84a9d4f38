"""A request with its routing: the live policy bound to its thresholds, the holder hot reload
swaps, and a routed request. Pure data."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router.routing.budget import Hold
from router.routing.callers import Caller
from router.routing.classify import Assessment
from router.routing.decide import resolve_thresholds
from router.routing.decision import Decision, Thresholds
from router.routing.policy import Policy
from router.schemas import ChatRequest


@dataclass(frozen=True)
class Routing:
    """The live policy bound to the classifier's calibration, and the upstream keys it names."""

    policy: Policy
    version: str
    thresholds: Mapping[str, Thresholds]
    keys: Mapping[str, str | None]  # api_key_env name -> key

    @classmethod
    def build(
        cls,
        policy: Policy,
        version: str,
        threshold_for_share: Callable[[float], float],
        environ: Mapping[str, str],
    ) -> Routing:
        keys = {tier.api_key_env: environ.get(tier.api_key_env) for tier in policy.tiers.values()}
        return cls(policy, version, resolve_thresholds(policy, threshold_for_share), keys)


@dataclass(frozen=True, slots=True)
class Routed:
    """A request with its routing decision (and the routing that made it, kept for the call)."""

    request: ChatRequest
    assessment: Assessment
    decision: Decision
    routing: Routing | None = None
    caller: Caller = field(default_factory=Caller)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    request_id: str = ""
    admitted_at: float = field(default_factory=time.monotonic)
    hold: Hold | None = None  # the expected cost reserved against the caller's budgets


class RoutingHolder:
    """The live `Routing`. Requests read `.current` once; a reload swaps it in one assignment,
    so a request never sees half of one policy and half of another."""

    def __init__(self, routing: Routing) -> None:
        self._current = routing
        self.last_error: str | None = None

    @property
    def current(self) -> Routing:
        return self._current

    def swap(self, routing: Routing) -> None:
        self._current = routing
        self.last_error = None
