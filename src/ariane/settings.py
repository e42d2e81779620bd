"""One typed settings object, read from ARIANE_* variables and an optional TOML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_LIMITS = {"user_id": 1}
DEFAULT_PRIORITIES = {
    "user_id": 100,
    "email": 80,
    "phone": 70,
    "device_id": 40,
    "anonymous_id": 20,
}


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, so a container's limit counts)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class IdentitySettings(BaseModel):
    """How events are resolved to people.

    `custom_types` are identifier types read from traits of the same name (for example a
    `loyalty_card` trait) in addition to `context.externalIds[]`, which may carry any type.
    `limits` caps how many values of a type a profile may ever hold (absent: unlimited).
    `priorities` decide which identifier is dropped when an event would merge profiles
    beyond a limit: the lowest-priority conflicting one goes.
    """

    custom_types: list[str] = Field(default_factory=list)
    limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_LIMITS))
    priorities: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    default_priority: int = 60
    default_phone_region: str | None = None

    # Configured tables are laid over the defaults rather than replacing them: a file
    # that only sets `email = 5` must not silently lift the one-user-id rule.
    @field_validator("limits")
    @classmethod
    def _over_default_limits(cls, value: dict[str, int]) -> dict[str, int]:
        return {**DEFAULT_LIMITS, **value}

    @field_validator("priorities")
    @classmethod
    def _over_default_priorities(cls, value: dict[str, int]) -> dict[str, int]:
        return {**DEFAULT_PRIORITIES, **value}

    def priority(self, id_type: str) -> int:
        return self.priorities.get(id_type, self.default_priority)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARIANE_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = "sqlite:///./ariane.db"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="Worker processes of `ariane serve`; by default one per CPU this process"
        " may run on.",
    )
    max_inflight_ingest: int = Field(
        default=64, description="Tracking requests processed at once before answering 429."
    )
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    max_admin_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Largest body the admin API (/api) reads; a larger one is answered 413.",
    )
    db_pool_size: int = 10
    request_header_timeout: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a request may take to send all of its headers, from its first"
        " byte (or from the connection opening) before its connection is closed.",
    )
    segment_timer_interval: float = Field(
        default=0.25,
        description="Seconds between two looks for segment timers that are due; 0 turns"
        " the timer loop off in this process.",
    )
    segment_apply_interval: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds between two rounds, in the timer loop, applying recorded"
        " segment entries and exits to the members and history of each segment.",
    )
    loyalty_review_interval: float = Field(
        default=0.25,
        ge=0,
        allow_inf_nan=False,
        description="Seconds between two looks for loyalty points due to expire and tiers"
        " due for review; 0 turns that job off in this process.",
    )
    bus_idle_interval: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds a handler of the bus (destinations...) waits for word of a"
        " commit before it looks anyway; 0 turns the bus's dispatcher off in this process.",
    )
    bus_processes: int = Field(
        default=2,
        ge=1,
        description="Processes the bus's handlers run in under `ariane serve --workers N`"
        " with N above 1: the channels' hand-overs in every one but the first, the other"
        " handlers and the jobs in the first (the process that supervises the workers).",
    )
    run_loops: bool = Field(
        default=True,
        description="Whether this process runs the background work (the bus's handlers:"
        " earn rules, loyalty timelines, destinations; and the jobs: segment timers, loyalty"
        " reviews). `ariane serve --workers N` with N above 1 runs them once,"
        " in the process that supervises the workers, and turns them off in the workers.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The address people reach Ariane at, for the links it puts in messages"
        " (one-click unsubscribe, opens, clicks).",
    )
    inbox_secret: str | None = Field(
        default=None,
        description="The secret your backend signs each user's in-app inbox token with"
        " (HMAC-SHA256 of the user id, in hex); the inbox is closed while it is unset.",
    )
    identity: IdentitySettings = Field(default_factory=IdentitySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ARIANE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
