"""A request with its routing: the live policy bound to its thresholds, the holder hot reload
swaps, and a routed request. Pure data."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from router.routing.budget import Hold
from router.routing.callers import Caller
from router.routing.classify import Assessment, Classifier
from router.routing.decide import resolve_thresholds
from router.routing.decision import Decision, Thresholds
from router.routing.policy import Policy
from router.schemas import ChatRequest
from router.schemas_anthropic import MessagesRequest


@dataclass(frozen=True)
class Routing:
    """The live policy and classifier, the policy's thresholds from that classifier's
    calibration, and the upstream keys it names. A policy reload and a model reload each swap
    one whole `Routing`, so a request never mixes one classifier's scores with another's
    thresholds."""

    policy: Policy
    version: str  # the policy's
    classifier: Classifier
    thresholds: Mapping[str, Thresholds]
    keys: Mapping[str, str | None]  # api_key_env name -> key
    classifier_version: str = "unversioned"  # shipped-<sha12>, learned-<sha12>, file-<sha12>
    # (tier, default base URL) -> upstream identity: computed once per routing, not per request
    _identities: dict[tuple[str, str | None], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        policy: Policy,
        version: str,
        classifier: Classifier,
        environ: Mapping[str, str],
        classifier_version: str = "unversioned",
    ) -> Routing:
        keys = {tier.api_key_env: environ.get(tier.api_key_env) for tier in policy.tiers.values()}
        thresholds = resolve_thresholds(policy, classifier.threshold_for_share)
        return cls(policy, version, classifier, thresholds, keys, classifier_version)

    def with_policy(self, policy: Policy, version: str, environ: Mapping[str, str]) -> Routing:
        """This routing's classifier under another policy (a policy reload)."""
        return Routing.build(policy, version, self.classifier, environ, self.classifier_version)

    def with_classifier(
        self, classifier: Classifier, classifier_version: str, environ: Mapping[str, str]
    ) -> Routing:
        """This routing's policy with another classifier (a model reload)."""
        return Routing.build(self.policy, self.version, classifier, environ, classifier_version)

    def identity(self, tier: str, default_base: str | None) -> str:
        """Which upstream answers for `tier`: a hash of its base URL and account key (never the
        key itself). Cached answers, spend and budgets are kept per upstream, so a simulated and
        a real flashpro sharing one Redis never serve or charge each other."""
        known = self._identities.get((tier, default_base))
        if known is None:
            spec = self.policy.tiers[tier]
            base = spec.api_base or default_base
            known = upstream_identity(base, self.keys.get(spec.api_key_env))
            self._identities[(tier, default_base)] = known
        return known

    def upstreams(self, default_base: str | None) -> str:
        """One identity for every upstream the policy's tiers call (budgets, share window)."""
        joined = "\0".join(sorted({self.identity(t, default_base) for t in self.policy.tiers}))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def account(self, tier: str, default_base: str | None) -> str:
        """How errors name the tier's upstream account: the key's env var and the host."""
        base = self.policy.tiers[tier].api_base or default_base or "DeepSeek's API"
        host = urlsplit(base).hostname or base
        return f"the account of {self.policy.tiers[tier].api_key_env} at {host}"


def upstream_identity(api_base: str | None, api_key: str | None) -> str:
    """A short hash of an upstream base URL and account key."""
    base = (api_base or "default").rstrip("/").lower()
    return hashlib.sha256(f"{base}\0{api_key or ''}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Routed:
    """A request with its routing decision (and the routing that made it, kept for the call).

    `request` is what routing reads; a front door whose body is relayed in another format
    (the Messages door) keeps that body beside it, and the pipeline sends it instead."""

    request: ChatRequest
    assessment: Assessment
    decision: Decision
    routing: Routing | None = None
    caller: Caller = field(default_factory=Caller)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    request_id: str = ""
    admitted_at: float = field(default_factory=time.monotonic)
    api: str = "chat"  # the front door: chat, messages or responses (metrics and logs)
    anthropic: MessagesRequest | None = None  # a Messages body, relayed in Anthropic format
    hold: Hold | None = None  # the expected cost reserved against the caller's budgets


class RoutingHolder:
    """The live `Routing`. Requests read `.current` once; a reload swaps it in one assignment,
    so a request never sees half of one policy and half of another. Each reloader keeps its
    last failure here (`last_error` the policy's, `model_error` the classifier's)."""

    def __init__(self, routing: Routing) -> None:
        self._current = routing
        self.last_error: str | None = None
        self.model_error: str | None = None

    @property
    def current(self) -> Routing:
        return self._current

    def swap(self, routing: Routing) -> None:
        self._current = routing
