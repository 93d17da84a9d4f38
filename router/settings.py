"""Process settings from the environment (and CLI flags). Pure; no global instance."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """How this flashpro process runs. Policy content lives in the policy file, not here."""

    model_config = SettingsConfigDict(env_prefix="FLASHPRO_", extra="ignore", frozen=True)

    policy: Path | None = Field(default=None, description="Policy YAML; None = embedded default.")
    classifier: Path | None = Field(
        default=None, description="Classifier artifact; None = shipped."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "FLASHPRO_REDIS_URL")
    )
    deepseek_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DEEPSEEK_API_KEY")
    )
    deepseek_api_base: str | None = Field(
        default=None, validation_alias=AliasChoices("DEEPSEEK_API_BASE")
    )
    deepseek_anthropic_api_base: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPSEEK_ANTHROPIC_API_BASE"),
        description="Anthropic-format base URL for /v1/messages; None = DeepSeek's.",
    )
    simulated: bool = Field(default=False, description="The upstream is the simulator.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Request line and headers together; a larger head gets 431 before any work.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="From a connection's opening, or a request's first byte, to the end of its "
        "headers; a slower client gets 408 and is dropped.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="From the end of a request's headers to the end of its body (408 past it).",
    )
    write_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a client may leave its answer unread (flashpro's writes paused) "
        "before it is dropped.",
    )
    max_connections: int = Field(
        default=4096, ge=1, description="Open client connections per process; past it, 503."
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=200,
        description="Nesting of objects and arrays in a request body (400 past it). JSON "
        "nested past 254 levels cannot be relayed or logged.",
    )
    policy_poll_seconds: float = Field(
        default=1.0, ge=0, description="How often the policy file is checked for edits; 0 = never."
    )
    responses_ttl_seconds: int = Field(
        default=30 * 86_400,
        ge=1,
        description="How long /v1/responses keeps a response for previous_response_id and GET.",
    )
    responses_max_entry_bytes: int = Field(
        default=8 * 1_048_576,
        ge=1024,
        description="A stored response (its whole conversation) over this size is not kept.",
    )
    log_level: str = "info"
    access_log: bool = Field(
        default=True, description="One JSON line per chat request on stdout (flashpro.access)."
    )
    shutdown_grace_s: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM, how long in-flight requests and streams may take to finish.",
    )
    transport: Literal["direct", "litellm"] = Field(
        default="direct",
        description="How deepseek/ models are called: flashpro's direct transport over aiohttp "
        "or litellm; other providers always go through litellm. See router/upstream/transport.py.",
    )
    upstream_max_connections: int = Field(
        default=4096, ge=1, description="Connections the direct transport may open in all."
    )
    upstream_max_connections_per_origin: int = Field(
        default=2048, ge=1, description="Connections the direct transport may open to one origin."
    )
