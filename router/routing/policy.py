"""Policy YAML: the models, loading and cross-reference validation. Pure except `load_policy`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.routing.learning import Learning, learning_problems
from router.routing.limits import Limits, check_key_digests, limit_problems
from router.routing.problems import Problems, describe, yaml_problem

Thinking = Literal["enabled", "disabled"]
Effort = Literal["low", "high", "max"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prices(_Strict):
    """USD per million tokens, per token class DeepSeek bills. Prices change: keep them here,
    never in code."""

    input_usd_per_mtok: float = Field(ge=0, description="Cache-miss input tokens.")
    cached_input_usd_per_mtok: float = Field(ge=0, description="Cache-hit input tokens.")
    output_usd_per_mtok: float = Field(ge=0, description="Output tokens, reasoning included.")

    def scaled(self, factor: float) -> Prices:
        if factor == 1.0:
            return self
        return Prices(
            input_usd_per_mtok=self.input_usd_per_mtok * factor,
            cached_input_usd_per_mtok=self.cached_input_usd_per_mtok * factor,
            output_usd_per_mtok=self.output_usd_per_mtok * factor,
        )


class LatencyProfile(_Strict):
    ttft_ms: float = Field(gt=0, description="Expected time to the first token, in ms.")
    tokens_per_s: float = Field(gt=0, description="Expected output speed, reasoning included.")


class Timeouts(_Strict):
    """Deadlines of one upstream call (the direct transport). DeepSeek keeps a request it cannot
    serve yet for up to ten minutes, sending blank lines or `: keep-alive` comments meanwhile;
    those do not count as the answer's first byte, so a queued request times out at
    `first_byte_ms` and a fallback tier can start."""

    connect_ms: float = Field(
        default=10_000, gt=0, description="Connecting (TCP, TLS, a proxy's tunnel), in ms."
    )
    pool_wait_ms: float = Field(
        default=3_000,
        ge=0,
        description="Wait for a free connection when all are in use, in ms; then 503.",
    )
    first_byte_ms: float | None = Field(
        default=300_000,
        gt=0,
        description="From the start of the call to the answer's first byte (a stream's first "
        "event with data; a whole answer's first byte that is not whitespace), in ms. "
        "null: no such deadline.",
    )
    total_ms: float | None = Field(
        default=1_800_000,
        gt=0,
        description="The whole call, the last byte of a stream included, in ms. null: none.",
    )


class Tier(_Strict):
    """One way of calling the upstream: a model with explicit thinking settings."""

    model: str = Field(min_length=1, description="litellm model id, e.g. deepseek/deepseek-v4-pro.")
    thinking: Thinking = Field(description="Always explicit: DeepSeek thinks unless told not to.")
    reasoning_effort: Effort | None = Field(
        default=None, description="Effort when thinking is enabled (high or max)."
    )
    prices: Prices = Field(
        description="Prices used for cost headers, budgets and estimates (peak prices when "
        "`off_peak` is set)."
    )
    off_peak_prices: Prices | None = Field(
        default=None,
        description="Prices in the policy's off-peak hours; unset: `prices` times "
        "`off_peak.discount`.",
    )
    vision: bool = Field(
        default=False,
        description="The model reads image parts. Requests with images go only to such tiers "
        "(DeepSeek: Flash reads images, Pro does not); with none allowed they get a 400.",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Upstream calls in flight per flashpro process for this tier's account and "
        "model (tiers sharing both share the count). Past it a request waits up to "
        "`queue_ms`, then falls back or gets 503 with Retry-After. DeepSeek answers 429 above "
        "2,500 (Flash) / 500 (Pro) per account. Unset: no cap.",
    )
    queue_ms: float = Field(
        default=2000,
        ge=0,
        description="How long a request waits for a free slot under `max_concurrency`.",
    )
    deprecated_ids: list[str] = Field(
        default_factory=list,
        description="Retired upstream model ids clients may still send to pin this tier; "
        "answers carry a `deprecation` note in x-flashpro-reason.",
    )
    latency: LatencyProfile = Field(description="Latency profile used for estimates.")
    api_base: str | None = Field(
        default=None, description="Upstream base URL; defaults to DEEPSEEK_API_BASE."
    )
    api_base_anthropic: str | None = Field(
        default=None,
        description="Anthropic-format base URL that /v1/messages calls go to; defaults to "
        "DEEPSEEK_ANTHROPIC_API_BASE, else https://api.deepseek.com/anthropic.",
    )
    api_key_env: str = Field(
        default="DEEPSEEK_API_KEY", description="Name of the env var holding the upstream key."
    )
    timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest silence between two reads of the answer (the idle gap), seconds; "
        "the litellm transport's timeout.",
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts, description="Deadlines of an upstream call (direct transport)."
    )
    expected_output_tokens: int = Field(
        default=400, ge=0, description="Answer tokens assumed when a request gives no max_tokens."
    )
    expected_reasoning_tokens: int = Field(
        default=0, ge=0, description="Reasoning tokens a thinking tier spends before answering."
    )

    @model_validator(mode="after")
    def _effort_needs_thinking(self) -> Tier:
        if self.thinking == "disabled" and self.reasoning_effort is not None:
            raise ValueError("reasoning_effort is set but thinking is disabled")
        return self

    @property
    def model_name(self) -> str:
        """The provider's own model id (the litellm id without its provider prefix)."""
        return self.model.split("/", 1)[-1]


class Condition(_Strict):
    """A rule's `when:`: every condition given must hold (AND)."""

    model: list[str] | None = Field(default=None, description="Requested model is one of these.")
    tools: bool | None = Field(default=None, description="The request defines tools.")
    json_output: bool | None = Field(default=None, description="JSON output is requested.")
    stream: bool | None = Field(default=None, description="The request streams.")
    min_prompt_tokens: int | None = Field(default=None, ge=0, description="Prompt at least N.")
    max_prompt_tokens: int | None = Field(default=None, ge=0, description="Prompt at most N.")
    min_score: float | None = Field(default=None, ge=0, le=1, description="Difficulty >= x.")
    max_score: float | None = Field(default=None, ge=0, le=1, description="Difficulty < x.")
    reasoning: bool | None = Field(
        default=None, description="The classifier saw math, proofs or hard code."
    )
    header: dict[str, str] | None = Field(
        default=None, description="Request headers (case-insensitive names) equal these values."
    )

    @model_validator(mode="before")
    @classmethod
    def _model_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            return {**data, "model": [data["model"]]}
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("a rule's 'when' needs at least one condition")
        return self


class Action(_Strict):
    """A rule's `then:`: pick a tier, or bound the tier the score would pick."""

    tier: str | None = Field(default=None, description="Use exactly this tier.")
    min_tier: str | None = Field(default=None, description="Use at least this tier.")
    max_tier: str | None = Field(default=None, description="Use at most this tier.")

    @model_validator(mode="after")
    def _one_kind(self) -> Action:
        if self.tier is not None and (self.min_tier or self.max_tier):
            raise ValueError("give either 'tier' or bounds ('min_tier'/'max_tier'), not both")
        if self.tier is None and self.min_tier is None and self.max_tier is None:
            raise ValueError("'then' needs 'tier', 'min_tier' or 'max_tier'")
        return self


class Rule(_Strict):
    name: str = Field(min_length=1, description="Shown in x-flashpro-rule when the rule decides.")
    description: str = Field(default="", description="Why the rule exists.")
    when: Condition
    then: Action


class ModelPattern(_Strict):
    """Model names routed by pattern: the names agents send (`claude-*`) that no alias lists."""

    match: str = Field(
        min_length=1,
        description="A model-name pattern: `*` matches any run of characters, e.g. claude-*opus*.",
    )
    alias: str = Field(description="The alias that routes the names it matches.")


class Alias(_Strict):
    """A routing alias clients use as the model name (e.g. `auto`)."""

    description: str = Field(default="", description="Shown in /v1/models.")
    default_tier: str = Field(description="Tier for scores below every threshold.")
    thresholds: dict[str, float] | None = Field(
        default=None, description="Tier -> minimum difficulty score that selects it."
    )
    shares: dict[str, float] | None = Field(
        default=None,
        description="Tier -> share of traffic at or above it; thresholds come from the "
        "classifier's calibration set.",
    )
    max_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description="Tiers whose expected latency would exceed this are not chosen.",
    )
    calibration: Literal["fixed", "live"] = Field(
        default="fixed",
        description="How `shares` become thresholds. fixed: from the classifier's calibration "
        "set, so a threshold means an absolute difficulty. live: from rolling quantiles of the "
        "scores this alias has actually seen (its last 2,000 requests, shared through Redis), "
        "so the shares hold when the traffic mix shifts; the first 200 use the fixed ones.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> Alias:
        if (self.thresholds is None) == (self.shares is None):
            raise ValueError("give exactly one of 'thresholds' or 'shares'")
        if self.calibration == "live" and self.shares is None:
            raise ValueError("'calibration: live' needs 'shares' (thresholds are fixed scores)")
        for name, value in (self.thresholds or self.shares or {}).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: {value} is outside [0, 1]")
        return self


class CachePolicy(_Strict):
    """The response cache: what is stored, for how long, and who may read it."""

    enabled: bool = Field(default=True, description="Look up and store answers at all.")
    ttl_seconds: int = Field(default=3600, ge=1, description="How long an answer is kept.")
    sampled_requests: bool = Field(
        default=False,
        description="Also cache requests that ask for a sampled answer (temperature above 0 "
        "and no seed). By default only repeatable requests (temperature 0 or a seed) are cached.",
    )
    serve_from_stronger_tiers: bool = Field(
        default=True,
        description="A stronger tier's answer may serve the same request routed to a weaker "
        "tier (Pro -> Flash), never the reverse.",
    )
    max_entry_bytes: int = Field(
        default=1_048_576, ge=1024, description="Larger answers are not cached."
    )
    memory_max_entries: int = Field(
        default=10_000, ge=1, description="In-process cache (no REDIS_URL): entries kept."
    )
    memory_max_bytes: int = Field(
        default=256 * 1_048_576, ge=1024, description="In-process cache: bytes kept."
    )
    near_ttl_seconds: float = Field(
        default=1.0,
        ge=0,
        description="With Redis: entries read or written are also kept in process memory this "
        "long, so a repeated hit skips the round trip (0 = off). An entry refreshed by another "
        "process is seen here at most this much later.",
    )
    coalesce_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Identical concurrent misses wait this long for the first one's answer, "
        "then call the upstream themselves.",
    )
    tenants: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 (hex) of a client API key -> tenant id; keys of one tenant share "
        "entries. Other keys each get their own namespace; no key is 'anonymous'.",
    )

    @model_validator(mode="after")
    def _tenant_keys_are_hashes(self) -> CachePolicy:
        check_key_digests("tenants", self.tenants)
        return self


class DecisionLogPolicy(_Strict):
    """Where routing decisions (and the feedback joined to them) are kept for retraining."""

    path: str = Field(
        min_length=1, description="JSON Lines file appended to (every process may share one)."
    )
    include_request: bool = Field(
        default=True,
        description="Keep the request body (messages, tools, response_format): `flashpro train` "
        "needs it to recompute features. False keeps only the score and the outcome.",
    )
    flush_seconds: float = Field(
        default=2.0, gt=0, description="Decisions are buffered and written this often."
    )


class Observability(_Strict):
    """What flashpro reports about the traffic it routes: metrics labels, logs, decision log."""

    tenant_labels: bool = Field(
        default=False,
        description="Label request metrics with the caller's group (never a key).",
    )
    log_prompts: bool = Field(
        default=False, description="Put the prompt messages in the access log lines."
    )
    savings_baseline_tier: str = Field(
        default="pro",
        description="Savings are reported against serving every request from this tier.",
    )
    decision_log: DecisionLogPolicy | None = Field(
        default=None, description="Keep decisions and feedback for `flashpro train`."
    )


class Policy(Limits):
    """A whole routing policy document (budgets, share cap, groups... come from `Limits`)."""

    version: Literal[1] = Field(description="Policy schema version.")
    tiers: dict[str, Tier] = Field(min_length=1, description="Tiers, cheapest first.")
    aliases: dict[str, Alias] = Field(min_length=1, description="Model names that are routed.")
    rules: list[Rule] = Field(default_factory=list, description="Ordered; first match wins.")
    model_patterns: list[ModelPattern] = Field(
        default_factory=list,
        description="Model names routed by pattern, first match wins, after the aliases and "
        "the tiers' names and model ids (which pin).",
    )
    cache: CachePolicy = Field(default_factory=CachePolicy, description="The response cache.")
    observability: Observability = Field(
        default_factory=Observability, description="Metrics labels, logs and the decision log."
    )
    learning: Learning | None = Field(
        default=None,
        description="Shadow comparisons that label live traffic for `flashpro learn` "
        "(opt-in: absent, nothing is compared).",
    )

    @model_validator(mode="after")
    def _cross_references(self) -> Policy:
        problems = list(_cross_reference_problems(self))
        if problems:
            raise Problems(problems)
        return self

    def rank(self, tier: str) -> int:
        return list(self.tiers).index(tier)

    def tier_for_model(self, model: str) -> str | None:
        """The tier a client pins by naming it, its upstream model id or a deprecated id."""
        if model in self.tiers:
            return model
        for name, tier in self.tiers.items():
            if model in (tier.model, tier.model_name):
                return name
        for name, tier in self.tiers.items():
            if model in tier.deprecated_ids:
                return name
        return None

    def alias_for_pattern(self, model: str) -> str | None:
        """The alias of the first `model_patterns` entry that matches the name."""
        for pattern in self.model_patterns:
            if fnmatchcase(model, pattern.match):
                return pattern.alias
        return None

    def prices_at(self, tier: str, now: datetime) -> Prices:
        """The tier's prices at `now` (UTC): off-peak prices in the off-peak hours."""
        spec = self.tiers[tier]
        if self.off_peak is None or not self.off_peak.active(now):
            return spec.prices
        return spec.off_peak_prices or spec.prices.scaled(self.off_peak.discount)


def _cross_reference_problems(policy: Policy) -> list[str]:
    tiers = list(policy.tiers)
    known = ", ".join(tiers)
    problems: list[str] = []

    def check(path: str, tier: str | None) -> None:
        if tier is not None and tier not in policy.tiers:
            problems.append(f"{path}: unknown tier '{tier}' (tiers: {known})")

    for name, alias in policy.aliases.items():
        if name in policy.tiers or policy.tier_for_model(name) is not None:
            problems.append(f"aliases.{name}: clashes with a tier name or tier model id")
        check(f"aliases.{name}.default_tier", alias.default_tier)
        table = alias.thresholds if alias.thresholds is not None else alias.shares or {}
        field = "thresholds" if alias.thresholds is not None else "shares"
        for tier in table:
            check(f"aliases.{name}.{field}.{tier}", tier)
        ordered = sorted((t for t in table if t in policy.tiers), key=tiers.index)
        values = [table[t] for t in ordered]
        ascending = field == "thresholds"
        if values != sorted(values, reverse=not ascending):
            order = "ascend" if ascending else "descend"
            problems.append(f"aliases.{name}.{field}: values must {order} with the tier order")
    for i, pattern in enumerate(policy.model_patterns):
        if pattern.alias not in policy.aliases:
            known_aliases = ", ".join(policy.aliases)
            problems.append(
                f"model_patterns[{i}].alias: unknown alias '{pattern.alias}' "
                f"(aliases: {known_aliases})"
            )
    seen: set[str] = set()
    for i, rule in enumerate(policy.rules):
        if rule.name in seen:
            problems.append(f"rules[{i}].name: duplicate rule name '{rule.name}'")
        seen.add(rule.name)
        for field in ("tier", "min_tier", "max_tier"):
            check(f"rules[{i}].then.{field}", getattr(rule.then, field))
        lo, hi = rule.then.min_tier, rule.then.max_tier
        if lo in policy.tiers and hi in policy.tiers and tiers.index(lo) > tiers.index(hi):
            problems.append(f"rules[{i}].then: min_tier '{lo}' is above max_tier '{hi}'")
    problems.extend(limit_problems(policy, tiers, list(policy.aliases)))
    problems.extend(learning_problems(policy.learning, tiers, list(policy.aliases)))
    return problems


class PolicyError(Exception):
    """A policy file that cannot be used; `problems` name the YAML path of each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [yaml_problem(exc, source)]) from exc
    if not isinstance(data, dict):
        raise PolicyError(source, ["the document must be a mapping"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, describe(exc.errors(), Policy)) from exc


def load_policy(path: Path | None = None) -> tuple[Policy, str]:
    """Read and validate a policy; returns it with its content hash (the live version id)."""
    if path is None:
        text = resources.files("router").joinpath("data/default.yaml").read_text("utf-8")
        source = "default.yaml (embedded)"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise PolicyError(str(path), [f"cannot read: {exc.strerror}"]) from exc
        source = str(path)
    policy = parse_policy(text, source)
    return policy, hashlib.sha256(text.encode()).hexdigest()[:12]


def json_schema() -> str:
    """The JSON Schema of policy files, as committed in policies/policy.schema.json."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "flashpro policy"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
