"""Message templates: Liquid (python-liquid 2), parsed once, rendered strictly.

A message is a mapping of parts (`subject`, `text`, `html`, or a data part such as
`title` or `url`), each a Liquid template. The variables a template can use are built
by `template_context`:

    profile.id                 the person's profile id
    traits.<name>              trait values
    identifiers.<type>         the first identifier of that type (email, phone, ...)
    identifiers_all.<type>     all identifiers of that type, a list
    computed.<name>            computed trait values
    segments                   the names of the segments the person is in, a list
    in_segment.<name>          true for each of those segments
    loyalty.balance            the points balance, nil without an account
    loyalty.tier               the tier name, nil without a tier
    event.name                 the event that triggered the message, nil if none
    event.properties.<name>    its properties
    journey.<name>             what the journey gives (id, name, step, ...)
    links.<name>               links made for this message (unsubscribe, ...)

Rendering is strict: a variable that is not there is an error naming it, line and
column, unless a fallback is given with `default`:
`{{ traits.nickname | default: "there" }}`. That includes conditions:
`{% if traits.vip %}` is an error for a person without the trait; write
`{% assign vip = traits.vip | default: false %}{% if vip %}` instead.

Compiling refuses what could only fail later: a filter Liquid does not have, a variable
outside the names above, and `include` / `render` (there are no partials).

HTML is escaped automatically: the `html` part is compiled with autoescape, so every
value output in it is HTML-escaped; `| safe` outputs a value as it is. Other parts are
plain text and never escaped.

Rendering is bounded: loops, output size, nesting and the size of assigned variables
have limits, and going past one is an error that says which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from liquid import BoundTemplate, Environment, StrictDefaultUndefined
from liquid.exceptions import (
    ContextDepthError,
    LiquidError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    UndefinedError,
)

from ariane.domain.errors import DomainError

MAX_SOURCE_BYTES = 100_000
MAX_LOOP_ITERATIONS = 10_000
MAX_OUTPUT_BYTES = 200_000
MAX_CONTEXT_DEPTH = 30
MAX_ASSIGNED_BYTES = 1_000_000

VARIABLES = frozenset(
    {
        "profile",
        "traits",
        "identifiers",
        "identifiers_all",
        "computed",
        "segments",
        "in_segment",
        "loyalty",
        "event",
        "journey",
        "links",
    }
)

HTML_PART = "html"
_PARTIALS = ("include", "render")


class TemplateError(DomainError):
    code = "invalid_template"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        if line is not None and column is not None:
            message = f"line {line}, column {column}: {message}"
        super().__init__(message, field=field)
        self.line = line
        self.column = column


class _Liquid(Environment):
    loop_iteration_limit: ClassVar[int | None] = MAX_LOOP_ITERATIONS
    output_stream_limit: ClassVar[int | None] = MAX_OUTPUT_BYTES
    context_depth_limit: ClassVar[int] = MAX_CONTEXT_DEPTH
    local_namespace_limit: ClassVar[int | None] = MAX_ASSIGNED_BYTES


_TEXT = _Liquid(undefined=StrictDefaultUndefined)
_HTML = _Liquid(undefined=StrictDefaultUndefined, autoescape=True)

_LIMITS: dict[type[LiquidError], str] = {
    LoopIterationLimitError: f"loops run more than {MAX_LOOP_ITERATIONS} times in all",
    OutputStreamLimitError: f"the output is longer than {MAX_OUTPUT_BYTES} bytes",
    ContextDepthError: f"nesting is deeper than {MAX_CONTEXT_DEPTH} levels",
    LocalNamespaceLimitError: f"assigned variables hold more than {MAX_ASSIGNED_BYTES} bytes",
}


class Template:
    """One part of a message, parsed. Build it with `compile_template`."""

    __slots__ = ("_bound", "field", "html", "source")

    def __init__(self, bound: BoundTemplate, source: str, field: str, html: bool) -> None:
        self._bound = bound
        self.source = source
        self.field = field
        self.html = html

    def render(self, context: Mapping[str, Any], field: str | None = None) -> str:
        try:
            return self._bound.render(context)
        except LiquidError as error:
            raise _template_error(error, self.source, field or self.field) from None


def compile_template(source: str, field: str, *, html: bool = False) -> Template:
    """Parse `source` once; `html` escapes every value it outputs."""
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise TemplateError(
            f"the template is longer than {MAX_SOURCE_BYTES} bytes; shorten it", field=field
        )
    env = _HTML if html else _TEXT
    try:
        bound = env.from_string(source)
        analysis = bound.analyze(include_partials=False)
    except LiquidError as error:
        raise _template_error(error, source, field) from None
    for tag in _PARTIALS:
        for span in analysis.tags.get(tag, []):
            raise _at(f"'{tag}' is not available: there are no partials", source, span.index, field)
    for name, spans in analysis.filters.items():
        if name not in env.filters:
            raise _at(f"unknown filter '{name}'", source, spans[0].index, field)
    for name, variables in analysis.globals.items():
        if name not in VARIABLES:
            known = ", ".join(sorted(VARIABLES))
            raise _at(
                f"unknown variable '{name}'; the variables are {known}",
                source,
                variables[0].span.index,
                field,
            )
    return Template(bound, source, field, html)


def compile_parts(parts: Mapping[str, str], path: str) -> dict[str, Template]:
    """Compile each part of a message; the `html` part escapes what it outputs."""
    return {
        part: compile_template(source, f"{path}.{part}", html=part == HTML_PART)
        for part, source in parts.items()
    }


def render_parts(compiled: Mapping[str, Template], context: Mapping[str, Any]) -> dict[str, str]:
    return {part: template.render(context) for part, template in compiled.items()}


def template_context(
    *,
    profile_id: str,
    traits: Mapping[str, Any],
    identifiers: Iterable[tuple[str, str]],
    computed: Mapping[str, Any],
    segments: Iterable[str],
    loyalty: Mapping[str, Any] | None,
    event: Mapping[str, Any] | None,
    journey: Mapping[str, Any] | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The variables of the module docstring.

    `traits` and `computed` map names to plain values. `identifiers` are (type, value)
    pairs, the one to use first listed first. `loyalty` has `balance` and `tier` (either
    may be missing: it is nil). `event` has `name` and `properties`, and anything else
    the message may show (`id`, `timestamp`); None when nothing triggered it.
    """
    by_type: dict[str, list[str]] = {}
    for id_type, value in identifiers:
        by_type.setdefault(id_type, []).append(value)
    names = sorted(set(segments))
    the_event = dict(event or {})
    return {
        "profile": {"id": profile_id},
        "traits": dict(traits),
        "identifiers": {id_type: values[0] for id_type, values in by_type.items()},
        "identifiers_all": by_type,
        "computed": dict(computed),
        "segments": names,
        "in_segment": dict.fromkeys(names, True),
        "loyalty": {"balance": None, "tier": None, **(loyalty or {})},
        "event": {"name": None, **the_event, "properties": dict(the_event.get("properties") or {})},
        "journey": dict(journey or {}),
        "links": dict(links or {}),
    }


def _template_error(error: LiquidError, source: str, field: str) -> TemplateError:
    message = _LIMITS.get(type(error))
    if message is not None:
        # A limit is the whole template's, not the place where it was crossed.
        return TemplateError(f"too much to render: {message}", field=field)
    text = str(error.message)
    if isinstance(error, UndefinedError):
        text += '; give a fallback with `| default: "..."` if it may be missing'
    if error.token is None:
        return TemplateError(text, field=field)
    if error.token.start_index < 0:
        # A block left open is found at the end of the source, with no position.
        text = text.replace("found end of expression", "found the end of the template")
        return _at(text, source, len(source), field)
    return _at(text, error.token.source or source, error.token.start_index, field)


def _at(message: str, source: str, index: int, field: str) -> TemplateError:
    before = source[:index]
    line = before.count("\n") + 1
    column = index - (before.rfind("\n") + 1) + 1
    return TemplateError(message, field=field, line=line, column=column)
