"""Policy models for spend budgets, traffic-share caps, caller groups, conversation affinity and
off-peak prices, with their cross-reference checks. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetLimit(_Strict):
    """USD limits; a missing limit is unlimited. Days and months are UTC calendar periods."""

    usd_per_day: float | None = Field(default=None, gt=0, description="USD per UTC day.")
    usd_per_month: float | None = Field(default=None, gt=0, description="USD per UTC month.")


class Budgets(_Strict):
    """Spend limits, priced from the policy's prices and the usage each answer reports."""

    on_exhausted: Literal["downgrade", "reject"] = Field(
        default="downgrade",
        description="downgrade: serve from `downgrade_to`; reject: answer 429 rate_limit_error.",
    )
    downgrade_to: str | None = Field(
        default=None, description="Tier used once a budget is spent; default the cheapest tier."
    )
    total: BudgetLimit | None = Field(
        default=None, description="Limits on all traffic together (every flashpro process)."
    )
    per_key: BudgetLimit | None = Field(
        default=None, description="Limits for each client API key (bearer token) separately."
    )
    on_store_outage: Literal["open", "closed"] = Field(
        default="open",
        description="While the shared ledger (Redis) is unreachable: open keeps enforcing the "
        "budgets from this process's view (the last spend read plus what it spent since); "
        "closed treats every budget as spent (reject: 503 with Retry-After; downgrade: the "
        "downgrade tier). Either way the spend is reconciled into Redis when it is back.",
    )


class ShareCap(_Strict):
    """A cap on the share of requests served by `tier` or above over a sliding window."""

    tier: str = Field(default="pro", description="Requests at this tier or above count.")
    max_share: float = Field(ge=0, le=1, description="Largest share allowed in the window.")
    window_s: int = Field(default=600, ge=1, description="Sliding window length, seconds.")
    margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Past the cap, requests whose score is less than this above the threshold "
        "that picked their tier go down one tier; clearer cases keep it.",
    )


class Group(_Strict):
    """A profile for a group of client keys."""

    default_alias: str | None = Field(
        default=None,
        description="Routes the group's requests that name the policy's first alias (e.g. auto).",
    )
    allowed_tiers: list[str] | None = Field(
        default=None, description="Only these tiers serve the group (others move down, then up)."
    )
    forbidden_tiers: list[str] = Field(
        default_factory=list, description="These tiers never serve the group."
    )
    budget: BudgetLimit | None = Field(
        default=None, description="Limits on the group's spend, all its keys together."
    )
    limits: RequestLimits | None = Field(
        default=None, description="Overrides the policy's `limits`, field by field."
    )


class Affinity(_Strict):
    """Keep a multi-turn conversation on its tier so DeepSeek's prefix cache keeps paying."""

    enabled: bool = Field(default=True, description="Remember each conversation's tier.")
    margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Stay while the score is within this of the threshold between the tiers.",
    )
    max_conversations: int = Field(
        default=100_000, ge=1, description="Conversations remembered per process."
    )


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _check_windows(windows: list[str]) -> list[str]:
    for window in windows:
        if not _WINDOW.match(window):
            raise ValueError(f"'{window}' is not 'HH:MM-HH:MM'")
    return windows


def _inside(windows: Sequence[str], minute: int) -> bool:
    for window in windows:
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in window.split("-"))
        if start <= minute < end if start <= end else (minute >= start or minute < end):
            return True
    return False


class PeakHours(_Strict):
    """Peak-price hours on some weekdays (UTC); every other hour of the week is off-peak."""

    days: list[Weekday] = Field(min_length=1, description="Weekdays these windows apply to.")
    windows_utc: list[str] = Field(
        min_length=1, description="'HH:MM-HH:MM' UTC on those days; a window may not wrap."
    )

    @field_validator("windows_utc")
    @classmethod
    def _windows(cls, windows: list[str]) -> list[str]:
        return _check_windows(windows)


class OffPeak(_Strict):
    """Discounted hours: applied to cost headers, budgets and estimates. Give either
    `windows_utc` (the same off-peak hours every day) or `peak` (the peak hours by weekday;
    the rest of the week is off-peak), as DeepSeek publishes its windows."""

    windows_utc: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Off-peak 'HH:MM-HH:MM' UTC, every day; a window may wrap past midnight.",
    )
    peak: list[PeakHours] | None = Field(
        default=None,
        min_length=1,
        description="Peak hours by weekday (UTC); every other hour is off-peak.",
    )
    discount: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Price multiplier off-peak (0.5 = half price) for tiers that give no "
        "`off_peak_prices`.",
    )

    @field_validator("windows_utc")
    @classmethod
    def _windows(cls, windows: list[str] | None) -> list[str] | None:
        return None if windows is None else _check_windows(windows)

    @model_validator(mode="after")
    def _one_way(self) -> OffPeak:
        if (self.windows_utc is None) == (self.peak is None):
            raise ValueError("give exactly one of 'windows_utc' or 'peak'")
        return self

    def active(self, now: datetime) -> bool:
        """Whether `now` (UTC) is off-peak."""
        minute = now.hour * 60 + now.minute
        if self.windows_utc is not None:
            return _inside(self.windows_utc, minute)
        day = _DAYS[now.weekday()]
        return not any(day in p.days and _inside(p.windows_utc, minute) for p in self.peak or ())

    def factor(self, now: datetime) -> float:
        """The price multiplier at `now` (UTC) for a tier without its own off-peak prices."""
        return self.discount if self.active(now) else 1.0

    def describe(self) -> str:
        if self.windows_utc is not None:
            return f"off-peak {', '.join(self.windows_utc)} UTC"
        return "peak " + "; ".join(
            f"{','.join(p.days)} {', '.join(p.windows_utc)} UTC" for p in self.peak or ()
        )


class Auth(_Strict):
    """Who may call flashpro. Open by default, so a first `flashpro serve` just works."""

    required: bool = Field(
        default=False,
        description="Only client keys listed in `keys` or `key_env` may call; any other bearer "
        "token, or none, gets 401 authentication_error. Every endpoint but /healthz is locked: "
        "the monitoring ones (/metrics, /v1/stats, /readyz) take `monitoring_keys`.",
    )
    monitoring_keys: list[str] = Field(
        default_factory=list,
        description="sha256 hex digests of keys that may read /metrics, /v1/stats and /readyz "
        "(and /v1/models) when `required`; client keys may not. With none here and none in "
        "`monitoring_key_env`, the client keys may.",
    )
    monitoring_key_env: list[str] = Field(
        default_factory=list,
        description="Names of env vars each holding a monitoring key (as `monitoring_keys`).",
    )


class RequestLimits(_Strict):
    """Per-key request rates and request-shape caps; a missing limit is unlimited."""

    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Requests per client key per minute (429 past it)."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens (prompt + completion, as answered) per client key per minute; "
        "once spent, requests get 429 until the minute ends.",
    )
    max_messages: int | None = Field(default=None, ge=1, description="Messages per request.")
    max_tokens_cap: int | None = Field(
        default=None, ge=1, description="Largest max_tokens / max_completion_tokens accepted."
    )
    max_n: int | None = Field(default=None, ge=1, description="Largest `n` accepted.")

    def over(self, base: RequestLimits | None) -> RequestLimits:
        """These limits, with the ones left unset taken from `base`."""
        if base is None:
            return self
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Retries(_Strict):
    """Retries of one tier on 429, 5xx, timeouts and dropped connections (never other 4xx)."""

    max_attempts: int = Field(
        default=2, ge=1, description="Calls per tier, the first included, before falling back."
    )
    backoff_initial_ms: float = Field(
        default=200, ge=0, description="Wait before the first retry; doubles each retry."
    )
    backoff_max_ms: float = Field(default=2000, ge=0, description="Longest wait between calls.")
    retry_after_max_s: float = Field(
        default=5, ge=0, description="The upstream's Retry-After is honoured up to this."
    )


class Breaker(_Strict):
    """A circuit breaker per tier: stop calling a tier that keeps failing, then probe it."""

    failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open the circuit."
    )
    open_seconds: float = Field(
        default=30, gt=0, description="How long an open circuit skips its tier before a probe."
    )


class Limits(_Strict):
    """Optional policy sections beyond tiers, aliases and rules (all backward compatible)."""

    budgets: Budgets | None = Field(default=None, description="USD spend limits.")
    share_cap: ShareCap | None = Field(default=None, description="Cap on strong-tier traffic.")
    groups: dict[str, Group] = Field(default_factory=dict, description="Key group profiles.")
    keys: dict[str, str] = Field(
        default_factory=dict, description="sha256 hex of a client API key -> group name."
    )
    key_env: dict[str, str] = Field(
        default_factory=dict,
        description="Name of an env var holding a client API key -> group name.",
    )
    affinity: Affinity | None = Field(default=None, description="Conversation affinity.")
    off_peak: OffPeak | None = Field(default=None, description="Off-peak price windows.")
    learn_latency: bool = Field(
        default=False,
        description="Learn each tier's latency profile from observed answers (moving averages "
        "per process) instead of trusting the policy's numbers alone.",
    )
    latency_ema_alpha: float = Field(
        default=0.2, gt=0, le=1, description="Weight of each new observation when learning."
    )
    auth: Auth = Field(default_factory=Auth, description="Client authentication.")
    limits: RequestLimits | None = Field(
        default=None, description="Request rates and caps for every key (groups may override)."
    )
    retries: Retries = Field(default_factory=Retries, description="Upstream retries.")
    breaker: Breaker = Field(default_factory=Breaker, description="Circuit breaker per tier.")
    fallbacks: dict[str, list[str]] | None = Field(
        default=None,
        description="Tier -> tiers tried in order once it fails. Unset: each tier falls back to "
        "the cheaper tiers, strongest first, and the cheapest to the next one up; {} = none.",
    )

    @model_validator(mode="after")
    def _hashes(self) -> Limits:
        check_key_digests("keys", self.keys)
        check_key_digests("auth.monitoring_keys", self.auth.monitoring_keys)
        return self


def check_key_digests(field: str, digests: Iterable[str]) -> None:
    """Client keys appear in a policy only as lower-case sha256 hex digests."""
    for digest in digests:
        if not _HEX64.match(digest):
            raise ValueError(f"{field}: '{digest}' is not a lower-case sha256 hex digest")


def limit_problems(
    limits: Limits,
    tiers: Sequence[str],
    aliases: Sequence[str],
    prefix: str = "",
) -> Iterator[str]:
    """Cross-reference errors, each with its YAML path."""
    known = ", ".join(tiers)

    def tier(path: str, name: str | None) -> Iterator[str]:
        if name is not None and name not in tiers:
            yield f"{prefix}{path}: unknown tier '{name}' (tiers: {known})"

    if limits.budgets is not None:
        yield from tier("budgets.downgrade_to", limits.budgets.downgrade_to)
    if limits.share_cap is not None:
        yield from tier("share_cap.tier", limits.share_cap.tier)
    for name, group in limits.groups.items():
        if group.default_alias is not None and group.default_alias not in aliases:
            yield f"{prefix}groups.{name}.default_alias: unknown alias '{group.default_alias}'"
        for i, allowed in enumerate(group.allowed_tiers or []):
            yield from tier(f"groups.{name}.allowed_tiers[{i}]", allowed)
        for i, forbidden in enumerate(group.forbidden_tiers):
            yield from tier(f"groups.{name}.forbidden_tiers[{i}]", forbidden)
        usable = [t for t in group.allowed_tiers or tiers if t not in group.forbidden_tiers]
        if not usable:
            yield f"{prefix}groups.{name}: no tier is left for the group"
    for name, chain in (limits.fallbacks or {}).items():
        yield from tier(f"fallbacks.{name}", name)
        for i, fallback in enumerate(chain):
            yield from tier(f"fallbacks.{name}[{i}]", fallback)
            if fallback == name:
                yield f"{prefix}fallbacks.{name}[{i}]: a tier cannot fall back to itself"
    for field, table in (("keys", limits.keys), ("key_env", limits.key_env)):
        for key, group_name in table.items():
            if group_name not in limits.groups:
                yield f"{prefix}{field}.{key}: unknown group '{group_name}'"
