"""The reference docs keep up with the code: routes, settings, variables, commands."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from ariane.bootstrap import build
from ariane.cli import app as cli_app
from ariane.settings import Settings
from ariane.web.app import create_app, route_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API = DOCS / "api.md"
CONFIGURATION = DOCS / "configuration.md"
VARIABLE = re.compile(r"\bARIANE_[A-Z0-9_]*[A-Z0-9]")
NAMED_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")


def all_docs() -> str:
    pages = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    return "\n".join(page.read_text() for page in pages if page.exists())


@pytest.fixture(scope="module")
def routes() -> Iterator[list[tuple[str, str]]]:
    # Building the app opens no connection: the in-memory URL is never used.
    container = build(Settings(database_url="sqlite://"))
    try:
        yield route_table(create_app(container))
    finally:
        container.close()


def test_every_route_is_in_the_api_reference(routes: list[tuple[str, str]]) -> None:
    assert len(routes) > 15
    text = API.read_text()
    missing = [f"{method} {path}" for method, path in routes if f"`{method} {path}`" not in text]
    assert not missing, f"docs/api.md does not describe {missing}"


def test_the_api_reference_names_only_real_routes(routes: list[tuple[str, str]]) -> None:
    named = set(NAMED_ROUTE.findall(API.read_text()))
    assert len(named) > 15
    assert not named - set(routes), "docs/api.md names routes the app does not serve"


def settings_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from settings_fields(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = CONFIGURATION.read_text()
    fields = list(settings_fields(Settings))
    assert len(fields) >= 10
    for dotted, _ in fields:
        variable = "ARIANE_" + dotted.replace(".", "__").upper()
        assert f"`{dotted}`" in text, f"docs/configuration.md does not describe {dotted}"
        assert f"`{variable}`" in text, f"docs/configuration.md does not name {variable}"


def test_every_variable_read_is_in_the_configuration_reference() -> None:
    sources = [*ROOT.glob("src/**/*.py"), *ROOT.glob("bench/**/*.py"), ROOT / "tests/conftest.py"]
    read = {v for path in sources for v in VARIABLE.findall(path.read_text())}
    assert {"ARIANE_CONFIG", "ARIANE_LOG_LEVEL"} <= read
    text = CONFIGURATION.read_text()
    missing = sorted(v for v in read if f"`{v}`" not in text)
    assert not missing, f"docs/configuration.md does not describe {missing}"
    assert "TOML" in text


def cli_commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    children = getattr(command, "commands", None)
    if children:
        for name, child in children.items():
            yield from cli_commands(child, f"{path} {name}")
    else:
        yield path, command


def test_every_cli_command_and_option_is_documented() -> None:
    commands = list(cli_commands(typer.main.get_command(cli_app), "ariane"))
    assert len(commands) >= 7
    text = all_docs()
    for path, command in commands:
        assert path in text, f"the docs do not describe `{path}`"
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"the docs do not describe `{path} {option}`"
