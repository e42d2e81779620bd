"""Channels as configured, and the workspace's sending rules.

A channel is declared as code (YAML or JSON) or through the API:

    channels:
      - name: email
        type: email                      # a registered type: email, apprise, webhook,
                                         # webpush, inbox, or one of your own
        purpose: marketing_email         # the consent a marketing message needs
        address: traits.email            # what addresses the person: traits.<name>,
                                         # identifiers.<type>, user_id, profile_id
        rate_limit: 50                   # messages a second, shared by every process
        concurrency: 4                   # messages handed over at once (connections)
        settings: {host: smtp.example.com, port: 587, from: "Shop <news@shop.example>",
                   security: starttls, username: news, password: ...}
    frequency_caps:                      # marketing messages, in the person's calendar days
      - {max: 1, days: 1, channel: email}
      - {max: 3, days: 7}                # across every channel
    global_control: 0.05                 # a stable share of people no journey sends to
    timezone: Europe/Paris               # the workspace's, for people without one

Secrets (the type's secret settings) are kept but never shown: `shown` masks them, and a
secret sent back masked keeps the value it had.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ariane.domain.definitions import keyed, listed
from ariane.domain.predicates import InvalidDefinition, parse_path

MASK = "********"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEYS = (
    "name", "type", "purpose", "address", "rate_limit", "concurrency", "settings", "enabled",
    "description",
)  # fmt: skip
# Messages a channel hands over at once, each over a connection of its own, unless it
# says otherwise: what most providers allow a client without asking.
CONCURRENCY = 4
MAX_CONCURRENCY = 64


class TypeInfo(Protocol):
    """What a registered channel type says of its settings (`ariane.channels`)."""

    @property
    def settings(self) -> frozenset[str]: ...

    @property
    def required(self) -> frozenset[str]: ...

    @property
    def secrets(self) -> frozenset[str]: ...

    @property
    def secret_values(self) -> frozenset[str]: ...

    @property
    def default_address(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    type: str
    purpose: str
    # Where the address is read: ("traits", "email"), ("identifiers", "phone"),
    # ("user_id",), ("profile_id",), ("push_subscriptions",).
    address: tuple[str, ...]
    settings: Mapping[str, Any]
    rate_limit: float | None = None
    concurrency: int = CONCURRENCY
    enabled: bool = True
    description: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)


def parse_channel(
    raw: Any,
    types: Mapping[str, TypeInfo],
    path: str = "channel",
    known: Mapping[str, Any] | None = None,
) -> ChannelConfig:
    """The channel `raw` declares; `known` is its definition saved before, whose secrets
    a masked value keeps."""
    node = keyed(raw, path, _KEYS)
    name = node.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidDefinition(
            "needs a name of lowercase letters, digits, - and _, such as email",
            field=f"{path}.name",
        )
    kind = node.get("type")
    if not isinstance(kind, str) or kind not in types:
        raise InvalidDefinition(
            f"unknown type {kind!r}; the types here are {', '.join(sorted(types))}",
            field=f"{path}.type",
        )
    info = types[kind]
    purpose = node.get("purpose", f"marketing_{name}")
    if not isinstance(purpose, str) or not 0 < len(purpose) <= 100:
        raise InvalidDefinition("needs a consent purpose such as marketing_email", field=path)
    address = node.get("address", info.default_address)
    if address is None:
        raise InvalidDefinition(
            "needs what addresses a person: traits.<name>, identifiers.<type>, user_id",
            field=f"{path}.address",
        )
    parts = parse_path(address, f"{path}.address")
    single = ("user_id", "profile_id", "push_subscriptions")
    if not (
        (len(parts) == 1 and parts[0] in single)
        or (len(parts) >= 2 and parts[0] == "traits")
        or (len(parts) == 2 and parts[0] == "identifiers")
    ):
        raise InvalidDefinition(
            "needs traits.<name>, identifiers.<type>, user_id or profile_id",
            field=f"{path}.address",
        )
    rate = node.get("rate_limit")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 100_000
    ):
        raise InvalidDefinition(
            "needs messages a second, from above 0 to 100,000", field=f"{path}.rate_limit"
        )
    concurrency = node.get("concurrency", CONCURRENCY)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise InvalidDefinition(
            f"needs how many messages to hand over at once, from 1 to {MAX_CONCURRENCY}",
            field=f"{path}.concurrency",
        )
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidDefinition("needs true or false", field=f"{path}.enabled")
    description = node.get("description", "")
    if not isinstance(description, str):
        raise InvalidDefinition("needs text", field=f"{path}.description")
    settings = _settings(node.get("settings", {}), info, f"{path}.settings", known)
    definition = {**node, "settings": settings}
    return ChannelConfig(
        name=name,
        type=kind,
        purpose=purpose,
        address=parts,
        settings=settings,
        rate_limit=None if rate is None else float(rate),
        concurrency=concurrency,
        enabled=enabled,
        description=description,
        definition=definition,
    )


def _settings(
    raw: Any, info: TypeInfo, path: str, known: Mapping[str, Any] | None
) -> dict[str, Any]:
    node = keyed(raw, path, sorted(info.settings))
    before = (known or {}).get("settings") or {}
    settings = dict(node)
    for name in info.secrets:
        if settings.get(name) == MASK:
            if name not in before:
                raise InvalidDefinition("is masked; give its value", field=f"{path}.{name}")
            settings[name] = before[name]
    for name in info.secret_values:
        values = settings.get(name)
        if isinstance(values, Mapping):
            kept = before.get(name) or {}
            settings[name] = {
                key: kept.get(key, value) if value == MASK else value
                for key, value in values.items()
            }
    for name in sorted(info.required):
        if settings.get(name) in (None, ""):
            raise InvalidDefinition("is needed", field=f"{path}.{name}")
    return settings


def shown(definition: Mapping[str, Any], info: TypeInfo | None) -> dict[str, Any]:
    """The definition with every secret masked."""
    settings = dict(definition.get("settings") or {})
    if info is not None:
        for name in info.secrets:
            if name in settings:
                settings[name] = MASK
        for name in info.secret_values:
            if isinstance(settings.get(name), Mapping):
                settings[name] = dict.fromkeys(settings[name], MASK)
    return {**definition, "settings": settings}


# --- the workspace's sending rules ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cap:
    """At most `max` marketing messages in `days` calendar days of the person's time
    zone (today and the days before), on `channel` or on all of them."""

    max: int
    days: int
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Policies:
    caps: tuple[Cap, ...] = ()
    global_control: float = 0.0
    timezone: str = "UTC"


def parse_policies(raw: Mapping[str, Any], path: str = "") -> Policies:
    prefix = f"{path}." if path else ""
    caps = []
    for index, item in enumerate(listed(raw.get("frequency_caps", []), f"{prefix}frequency_caps")):
        where = f"{prefix}frequency_caps[{index}]"
        node = keyed(item, where, ("max", "days", "channel"))
        most, days, channel = node.get("max"), node.get("days", 1), node.get("channel")
        if isinstance(most, bool) or not isinstance(most, int) or not 0 <= most <= 10_000:
            raise InvalidDefinition("needs a whole number from 0 to 10,000", field=f"{where}.max")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
            raise InvalidDefinition("needs a whole number from 1 to 366", field=f"{where}.days")
        if channel is not None and not isinstance(channel, str):
            raise InvalidDefinition("needs a channel's name", field=f"{where}.channel")
        caps.append(Cap(most, days, channel))
    share = raw.get("global_control", 0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
        raise InvalidDefinition(
            "needs a share from 0 to below 1, such as 0.05", field=f"{prefix}global_control"
        )
    timezone = raw.get("timezone", "UTC")
    try:
        ZoneInfo(timezone) if isinstance(timezone, str) else None
    except (ZoneInfoNotFoundError, ValueError):
        timezone = None
    if not isinstance(timezone, str):
        raise InvalidDefinition(
            "needs an IANA time zone such as Europe/Paris", field=f"{prefix}timezone"
        )
    return Policies(tuple(caps), float(share), timezone)
