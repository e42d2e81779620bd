"""Channels, templates and the workspace's sending rules: declared as code (one YAML
document, `ariane channels apply`) or through the API, checked before anything is saved.

The channels in force are built once and kept (`Channels.senders`): a channel holds its
connections (an SMTP session, an HTTP client) across messages; one whose settings
changed is built again. A channel that hands `concurrency` messages over at once is
built that many times, one for each thread that sends: a channel type need not be safe
to share between threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ariane.channels import Channel, ChannelType, Context, channel_types
from ariane.domain.channels import (
    ChannelConfig,
    Policies,
    parse_channel,
    parse_policies,
    shown,
)
from ariane.domain.definitions import keyed, listed
from ariane.domain.errors import NotFound
from ariane.domain.message_templates import MessageTemplate, parse_message_template
from ariane.domain.predicates import InvalidDefinition
from ariane.storage import channels as store
from ariane.storage.database import Database

log = logging.getLogger(__name__)

# How long what was read from the database is used before it is read again.
REFRESH_SECONDS = 1.0
_DOCUMENT = ("channels", "templates", "frequency_caps", "global_control", "timezone")


class Channels:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        inbox: Callable[[Any], str] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.types: dict[str, ChannelType] = channel_types()
        self.context = Context(clock=clock, inbox=inbox)
        self._lock = threading.Lock()
        self._read_at = -1.0
        # When the channels kept began to be read (`time.monotonic`).
        self._read_from = -1.0
        self._configs: dict[str, ChannelConfig] = {}
        self._templates: dict[str, MessageTemplate] = {}
        self._policies = Policies()
        self._built: dict[str, tuple[ChannelConfig, list[Channel]]] = {}

    # --- as code --------------------------------------------------------------------------

    def apply(self, document: Any) -> dict[str, list[dict[str, Any]]]:
        """Create or update the channels, templates and sending rules of `document`, all
        checked before any is saved."""
        node = keyed(document, "document", _DOCUMENT)
        with self.db.read() as conn:
            before = {row["name"]: row["definition"] for row in store.every_channel(conn)}
        channels = []
        for index, item in enumerate(listed(node.get("channels", []), "channels")):
            name = item.get("name") if isinstance(item, Mapping) else None
            channels.append(
                parse_channel(item, self.types, f"channels[{index}]", before.get(str(name)))
            )
        templates = [
            parse_message_template(item, f"templates[{index}]")
            for index, item in enumerate(listed(node.get("templates", []), "templates"))
        ]
        _unique([c.name for c in channels], "channels")
        _unique([t.name for t in templates], "templates")
        rules = {
            key: node[key]
            for key in ("frequency_caps", "global_control", "timezone")
            if key in node
        }
        if rules:
            parse_policies(rules)
        now = self.clock()

        def work(conn: Any) -> dict[str, list[dict[str, Any]]]:
            done: dict[str, list[dict[str, Any]]] = {"channels": [], "templates": []}
            for channel in channels:
                change, version = store.save_channel(
                    conn, channel.name, channel.type, channel.definition, now
                )
                done["channels"].append(
                    {"name": channel.name, "change": change, "version": version}
                )
            for template in templates:
                change, version = store.save_template(conn, template.name, template.definition, now)
                done["templates"].append(
                    {"name": template.name, "change": change, "version": version}
                )
            if rules:
                store.save_policies(conn, {**store.policies(conn), **rules}, now)
            return done

        done = self.db.write(work)
        self._read_at = -1.0
        return done

    def put_channel(self, name: str, definition: Any) -> dict[str, Any]:
        if isinstance(definition, Mapping) and definition.get("name", name) != name:
            raise InvalidDefinition("differs from the name in the path", field="name")
        body = {**definition, "name": name} if isinstance(definition, Mapping) else definition
        with self.db.read() as conn:
            before = store.get_channel(conn, name)
        channel = parse_channel(body, self.types, "channel", before and before["definition"])
        now = self.clock()
        change, version = self.db.write(
            lambda conn: store.save_channel(conn, name, channel.type, channel.definition, now)
        )
        self._read_at = -1.0
        return {"name": name, "change": change, "version": version}

    def delete_channel(self, name: str) -> None:
        if not self.db.write(lambda conn: store.delete_channel(conn, name)):
            raise NotFound(f"no channel {name!r}", field="channel")
        self._read_at = -1.0

    def list_channels(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = store.every_channel(conn)
        return [self._shown(row) for row in rows]

    def get_channel(self, name: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = store.get_channel(conn, name)
        if row is None:
            raise NotFound(f"no channel {name!r}", field="channel")
        return self._shown(row)

    def _shown(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": row["name"],
            "type": row["type"],
            "version": row["version"],
            "definition": shown(row["definition"], self.types.get(row["type"])),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def put_template(self, name: str, definition: Any) -> dict[str, Any]:
        if isinstance(definition, Mapping) and definition.get("name", name) != name:
            raise InvalidDefinition("differs from the name in the path", field="name")
        body = {**definition, "name": name} if isinstance(definition, Mapping) else definition
        template = parse_message_template(body, "template")
        now = self.clock()
        change, version = self.db.write(
            lambda conn: store.save_template(conn, name, template.definition, now)
        )
        self._read_at = -1.0
        return {"name": name, "change": change, "version": version}

    def delete_template(self, name: str) -> None:
        if not self.db.write(lambda conn: store.delete_template(conn, name)):
            raise NotFound(f"no template {name!r}", field="template")
        self._read_at = -1.0

    def list_templates(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return store.every_template(conn)

    def get_template(self, name: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = store.get_template(conn, name)
        if row is None:
            raise NotFound(f"no template {name!r}", field="template")
        return row

    def policies_shown(self) -> dict[str, Any]:
        with self.db.read() as conn:
            return store.policies(conn)

    # --- in force -------------------------------------------------------------------------

    def _refresh(self, *, force: bool = False) -> None:
        """Read the channels, templates and sending rules again if what is kept is more
        than `REFRESH_SECONDS` old, or if `force`d: when the journeys changed, which
        name them (`Journeys._refresh`)."""
        with self._lock:
            if not force and time.monotonic() - self._read_at < REFRESH_SECONDS:
                return
        started = time.monotonic()
        with self.db.read() as conn:
            channel_rows = store.every_channel(conn)
            template_rows = store.every_template(conn)
            rules = store.policies(conn)
        configs: dict[str, ChannelConfig] = {}
        for row in channel_rows:
            try:
                configs[row["name"]] = parse_channel(row["definition"], self.types)
            except InvalidDefinition as error:
                log.error("channel %s cannot be used: %s", row["name"], error.message)
        templates: dict[str, MessageTemplate] = {}
        for row in template_rows:
            try:
                templates[row["name"]] = parse_message_template(row["definition"])
            except InvalidDefinition as error:
                log.error("template %s cannot be used: %s", row["name"], error.message)
        try:
            policies = parse_policies(rules)
        except InvalidDefinition as error:
            log.error("the sending rules cannot be used: %s", error.message)
            policies = Policies()
        with self._lock:
            if started < self._read_from:
                # Another thread's read, begun later, is in place already.
                return
            self._configs, self._templates, self._policies = configs, templates, policies
            self._read_at = time.monotonic()
            self._read_from = started

    def read_again(self) -> None:
        """Read the channels, templates and sending rules again now."""
        self._refresh(force=True)

    def configs(self) -> dict[str, ChannelConfig]:
        self._refresh()
        return self._configs

    def config(self, name: str) -> ChannelConfig | None:
        return self.configs().get(name)

    def template(self, name: str) -> MessageTemplate | None:
        self._refresh()
        return self._templates.get(name)

    def policies(self) -> Policies:
        self._refresh()
        return self._policies

    def built(self, config: ChannelConfig) -> Channel:
        """The channel for `config` (the first of its `senders`)."""
        return self.senders(config)[0]

    def senders(self, config: ChannelConfig) -> list[Channel]:
        """The `config.concurrency` channels for `config`, built once and kept while its
        settings hold: one for each message handed over at once."""
        with self._lock:
            found = self._built.get(config.name)
            if found is not None and found[0] == config:
                return found[1]
        made = [
            self.types[config.type].make(config.settings, self.context)
            for _ in range(config.concurrency)
        ]
        with self._lock:
            old = self._built.get(config.name)
            self._built[config.name] = (config, made)
        for channel in old[1] if old is not None else ():
            channel.close()
        return made

    def close(self) -> None:
        with self._lock:
            built, self._built = self._built, {}
        for _, made in built.values():
            for channel in made:
                channel.close()


def _unique(names: list[str], path: str) -> None:
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise InvalidDefinition(f"{name!r} is given twice", field=f"{path}[{index}].name")
