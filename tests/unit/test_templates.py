"""Message templates: parsed once, rendered strictly, bounded, the html part escaped."""

from __future__ import annotations

from typing import Any

import pytest

from ariane.domain.errors import DomainError
from ariane.domain.templates import (
    MAX_SOURCE_BYTES,
    TemplateError,
    compile_parts,
    compile_template,
    render_parts,
    template_context,
)


def context(**overrides: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "profile_id": "p-1",
        "traits": {"first_name": "Ada", "plan": "pro"},
        "identifiers": [("email", "ada@example.com"), ("email", "ada@work.example")],
        "computed": {"orders": 3},
        "segments": ["vip", "newsletter"],
        "loyalty": {"balance": 120, "tier": "gold"},
        "event": {"name": "Order Completed", "properties": {"order_id": "o-9", "total": 42}},
    }
    return template_context(**(given | overrides))


def render(source: str, **overrides: Any) -> str:
    return compile_template(source, "templates.welcome.text").render(context(**overrides))


def test_the_context_gives_the_documented_names() -> None:
    built = template_context(
        profile_id="p-1",
        traits={"first_name": "Ada"},
        identifiers=[("email", "a@x.example"), ("phone", "+33600000000"), ("email", "b@x.example")],
        computed={"orders": 3},
        segments=["vip", "newsletter", "vip"],
        loyalty={"balance": 120},
        event={"name": "Signed Up", "properties": {"plan": "pro"}, "id": "e-1"},
        journey={"id": "j-1", "name": "Welcome"},
        links={"unsubscribe": "https://u.example/x"},
    )
    assert built == {
        "profile": {"id": "p-1"},
        "traits": {"first_name": "Ada"},
        "identifiers": {"email": "a@x.example", "phone": "+33600000000"},
        "identifiers_all": {"email": ["a@x.example", "b@x.example"], "phone": ["+33600000000"]},
        "computed": {"orders": 3},
        "segments": ["newsletter", "vip"],
        "in_segment": {"newsletter": True, "vip": True},
        "loyalty": {"balance": 120, "tier": None},
        "event": {"name": "Signed Up", "properties": {"plan": "pro"}, "id": "e-1"},
        "journey": {"id": "j-1", "name": "Welcome"},
        "links": {"unsubscribe": "https://u.example/x"},
    }


def test_without_event_loyalty_journey_or_links_the_names_are_still_there() -> None:
    built = context(event=None, loyalty=None)
    assert built["event"] == {"name": None, "properties": {}}
    assert built["loyalty"] == {"balance": None, "tier": None}
    assert built["journey"] == {} and built["links"] == {}


def test_every_documented_variable_renders() -> None:
    source = (
        "{{ profile.id }} {{ traits.first_name }} {{ identifiers.email }} "
        "{{ identifiers_all.email | join: ',' }} {{ computed.orders }} "
        "{{ segments | join: ',' }} {% if in_segment.vip %}VIP{% endif %} "
        "{{ loyalty.balance }} {{ loyalty.tier }} {{ event.name }} "
        "{{ event.properties.order_id }} {{ journey.name }} {{ links.unsubscribe }}"
    )
    text = render(source, journey={"name": "Welcome"}, links={"unsubscribe": "https://u/x"})
    assert text == (
        "p-1 Ada ada@example.com ada@example.com,ada@work.example 3 newsletter,vip VIP "
        "120 gold Order Completed o-9 Welcome https://u/x"
    )


def test_an_unknown_variable_is_refused_naming_it_with_line_and_column() -> None:
    template = compile_template("Hello\n  {{ traits.nickname }}!", "templates.welcome.text")
    with pytest.raises(TemplateError) as raised:
        template.render(context())
    error = raised.value
    assert isinstance(error, DomainError)
    assert error.field == "templates.welcome.text"
    assert (error.line, error.column) == (2, 6)
    assert "traits.nickname is undefined" in error.message
    assert error.message.startswith("line 2, column 6: ")
    assert "default" in error.message


def test_the_field_can_be_given_at_render() -> None:
    template = compile_template("{{ traits.nickname }}", "a")
    with pytest.raises(TemplateError) as raised:
        template.render(context(), field="journeys.welcome.steps.2.subject")
    assert raised.value.field == "journeys.welcome.steps.2.subject"


def test_the_default_filter_gives_a_fallback_for_what_is_missing() -> None:
    assert render('Hi {{ traits.nickname | default: "there" }}') == "Hi there"
    assert render('Hi {{ traits.first_name | default: "there" }}') == "Hi Ada"
    assert render('{{ event.properties.coupon | default: "none" }}', event=None) == "none"
    assert render('{{ loyalty.tier | default: "member" }}', loyalty=None) == "member"


def test_a_condition_on_a_missing_trait_is_refused_and_default_makes_it_work() -> None:
    with pytest.raises(TemplateError, match=r"traits\.vip is undefined"):
        render("{% if traits.vip %}yes{% endif %}")
    source = "{% assign vip = traits.vip | default: false %}{% if vip %}yes{% else %}no{% endif %}"
    assert render(source) == "no"


def test_a_template_that_does_not_parse_is_refused_with_line_and_column() -> None:
    with pytest.raises(TemplateError) as raised:
        compile_template("Hello\n  {% if %}x{% endif %}", "templates.welcome.html")
    error = raised.value
    assert error.field == "templates.welcome.html"
    assert (error.line, error.column) == (2, 6)
    assert error.message == "line 2, column 6: missing expression"


@pytest.mark.parametrize(
    ("source", "where", "says"),
    [
        ("{{ traits.name ", (1, 1), "expected '}}'"),
        ("a\n\n{% endif %}", (3, 4), "unexpected tag 'endif'"),
        ("{% for x in segments %}\n", (2, 1), "expected tag endfor, found the end of the template"),
        ("{{ traits.name | shout }}", (1, 18), "unknown filter 'shout'"),
        ("{{ trait.name }}", (1, 4), "unknown variable 'trait'"),
        ("x {% include 'footer' %}", (1, 6), "'include' is not available"),
        ("{% render 'footer' %}", (1, 4), "'render' is not available"),
    ],
)
def test_what_could_only_fail_later_is_refused_when_compiling(
    source: str, where: tuple[int, int], says: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        compile_template(source, "f")
    assert (raised.value.line, raised.value.column) == where
    assert says in raised.value.message


def test_local_variables_and_loop_variables_are_not_unknown() -> None:
    source = (
        "{% assign n = computed.orders %}{% capture who %}{{ traits.first_name }}{% endcapture %}"
        "{% for s in segments %}{{ forloop.index }}{{ s }}{% endfor %} {{ n }} {{ who }}"
    )
    assert render(source) == "1newsletter2vip 3 Ada"


def test_a_source_over_the_limit_is_refused() -> None:
    with pytest.raises(TemplateError, match="longer than") as raised:
        compile_template("x" * (MAX_SOURCE_BYTES + 1), "templates.big.text")
    assert raised.value.field == "templates.big.text"
    compile_template("x" * MAX_SOURCE_BYTES, "templates.big.text")


def test_a_loop_over_the_limit_is_refused() -> None:
    with pytest.raises(TemplateError, match="loops run more than 10000 times"):
        render("{% for i in (1..10001) %}{% endfor %}")
    with pytest.raises(TemplateError, match="loops run more than 10000 times"):
        render("{% for i in (1..200) %}{% for j in (1..200) %}{% endfor %}{% endfor %}")
    assert render("{% for i in (1..10000) %}{% endfor %}done") == "done"


def test_output_over_the_limit_is_refused() -> None:
    with pytest.raises(TemplateError, match="output is longer than 200000 bytes"):
        render("{% for i in (1..5000) %}{{ traits.plan }}" + "x" * 40 + "{% endfor %}")
    assert len(render("{% for i in (1..5000) %}0123456789{% endfor %}")) == 50_000


def test_assigned_variables_over_the_limit_are_refused() -> None:
    source = (
        "{% assign s = 'xxxxxxxxxx' %}"
        "{% for i in (1..20) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}"
    )
    with pytest.raises(TemplateError, match="assigned variables hold more than"):
        render(source)


def test_a_render_error_of_a_filter_names_where() -> None:
    with pytest.raises(TemplateError) as raised:
        render("{{ computed.orders | divided_by: 0 }}")
    assert raised.value.line == 1 and "divide by 0" in raised.value.message


def test_the_html_part_escapes_values_and_the_text_part_does_not() -> None:
    compiled = compile_parts(
        {
            "subject": "Hi {{ traits.first_name }}",
            "text": "Hi {{ traits.first_name }}",
            "html": "<p>Hi {{ traits.first_name }}</p>{{ traits.bio | safe }}",
        },
        "journeys.welcome.steps.1",
    )
    evil = context(traits={"first_name": '<script>"x"&</script>', "bio": "<b>ok</b>"})
    assert render_parts(compiled, evil) == {
        "subject": 'Hi <script>"x"&</script>',
        "text": 'Hi <script>"x"&</script>',
        "html": "<p>Hi &lt;script&gt;&#34;x&#34;&amp;&lt;/script&gt;</p><b>ok</b>",
    }


def test_parts_are_named_by_their_path() -> None:
    with pytest.raises(TemplateError) as raised:
        compile_parts({"subject": "ok", "title": "{{ nope }}"}, "journeys.welcome.steps.1")
    assert raised.value.field == "journeys.welcome.steps.1.title"
    compiled = compile_parts({"subject": "{{ traits.nickname }}"}, "journeys.w.steps.1")
    with pytest.raises(TemplateError) as raised:
        render_parts(compiled, context())
    assert raised.value.field == "journeys.w.steps.1.subject"


def test_a_template_is_parsed_once_and_rendered_many_times() -> None:
    template = compile_template("Hi {{ traits.first_name }}", "f")
    assert template.render(context()) == "Hi Ada"
    assert template.render(context(traits={"first_name": "Grace"})) == "Hi Grace"
