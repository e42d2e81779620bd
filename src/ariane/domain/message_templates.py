"""A message template: the Liquid parts of one message, declared as code or through the
API, compiled when it is declared so that a template that does not parse is refused
there, naming its line and column.

    templates:
      - name: cart-reminder
        subject: "{{ traits.first_name | default: 'Hello' }}, your cart is waiting"
        text: "Your cart {{ event.properties.cartId }} is still there."
        html: "<p>Your cart is still <a href='{{ links.site }}'>there</a>.</p>"
        data: {title: "Your cart", url: "https://shop.example/cart"}   # push and inbox

`subject` and `text` are needed; `html` and the `data` parts are optional, each a
template too. The variables are those of `domain.templates.template_context`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ariane.domain.definitions import keyed
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.templates import Template, compile_parts, render_parts

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DATA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_DATA_PARTS = 20


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    data: dict[str, str]


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    name: str
    parts: Mapping[str, Template]
    data: Mapping[str, Template] = field(default_factory=dict)
    description: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)

    def render(self, context: Mapping[str, Any]) -> Rendered:
        """Every part rendered; `TemplateError` naming the part that failed."""
        parts = render_parts(self.parts, context)
        return Rendered(
            subject=parts["subject"],
            text=parts["text"],
            html=parts.get("html"),
            data=render_parts(self.data, context),
        )


def parse_message_template(raw: Any, path: str = "template") -> MessageTemplate:
    node = keyed(raw, path, ("name", "description", "subject", "text", "html", "data"))
    name = node.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidDefinition(
            "needs a name of lowercase letters, digits, - and _, such as cart-reminder",
            field=f"{path}.name",
        )
    description = node.get("description", "")
    if not isinstance(description, str):
        raise InvalidDefinition("needs text", field=f"{path}.description")
    sources: dict[str, str] = {}
    for part in ("subject", "text", "html"):
        value = node.get(part)
        if value is None and part != "html":
            raise InvalidDefinition("is needed", field=f"{path}.{part}")
        if value is not None and not isinstance(value, str):
            raise InvalidDefinition("needs text", field=f"{path}.{part}")
        if value is not None:
            sources[part] = value
    data = node.get("data", {})
    if not isinstance(data, Mapping) or len(data) > MAX_DATA_PARTS:
        raise InvalidDefinition(
            f"needs an object of at most {MAX_DATA_PARTS} texts", field=f"{path}.data"
        )
    for key, value in data.items():
        if not isinstance(key, str) or not _DATA_NAME.match(key):
            raise InvalidDefinition("needs a name such as title or url", field=f"{path}.data")
        if not isinstance(value, str):
            raise InvalidDefinition("needs text", field=f"{path}.data.{key}")
    return MessageTemplate(
        name=name,
        parts=compile_parts(sources, path),
        data=compile_parts(dict(data), f"{path}.data"),
        description=description,
        definition=dict(node),
    )
