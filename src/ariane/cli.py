"""The `ariane` command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ariane.bootstrap import Container, build
from ariane.domain.errors import DomainError
from ariane.settings import load_settings

app = typer.Typer(help="Ariane, the real-time customer data platform.", no_args_is_help=True)
sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
tokens_app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)
profile_app = typer.Typer(help="Read profiles.", no_args_is_help=True)
import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(profile_app, name="profile")
app.add_typer(import_app, name="import")

console = Console()
err = Console(stderr=True)


def _container() -> Container:
    return build(load_settings())


def _fail(error: DomainError) -> typer.Exit:
    where = f" ({error.field})" if error.field else ""
    err.print(f"[red]error{where}:[/red] {error.message}")
    return typer.Exit(code=1)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from ariane.storage.migrate import upgrade

    container = _container()
    upgrade(container.db)
    console.print(f"database is up to date ({container.db.dialect.name})")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; ARIANE_PORT by default.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Serve the tracking API, the admin API and /metrics."""
    import uvicorn

    settings = load_settings()
    uvicorn.run(
        "ariane.web.asgi:app_factory",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_level=os.environ.get("ARIANE_LOG_LEVEL", "info"),
        access_log=False,
    )


@sources_app.command("create")
def sources_create(name: str) -> None:
    """Create a source; its write key is printed on the last line, and never again."""
    try:
        source, write_key = _container().access.create_source(name)
    except DomainError as error:
        raise _fail(error) from None
    console.print(f"source {source.name} created (id {source.id}); its write key:")
    print(write_key)


@sources_app.command("list")
def sources_list() -> None:
    """List the sources."""
    for source in _container().access.list_sources():
        print(f"{source.id}\t{source.name}\t{source.created_at.isoformat()}")


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="admin (read and change) or analyst (read only).")],
    name: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
) -> None:
    """Create an API token; it is printed on the last line, and never again."""
    try:
        token, secret = _container().access.create_token(role, name)
    except DomainError as error:
        raise _fail(error) from None
    console.print(f"{token.role} token {token.name} created (id {token.id}):")
    print(secret)


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


@profile_app.command("show")
def profile_show(
    profile_id: Annotated[str | None, typer.Argument(help="A profile id.")] = None,
    email: Annotated[str | None, typer.Option(help="Find the profile by email.")] = None,
    id_type: Annotated[str | None, typer.Option("--type", help="Any identifier type.")] = None,
    value: Annotated[str | None, typer.Option(help="Its value, with --type.")] = None,
) -> None:
    """Print the 360° view of one profile as JSON."""
    profiles = _container().profiles
    try:
        if profile_id is None:
            if email is not None:
                id_type, value = "email", email
            if id_type is None or value is None:
                raise DomainError("give a profile id, --email, or --type with --value", field="id")
            profile_id = profiles.lookup(id_type, value)
        print(_dump(profiles.view(profile_id)))
    except DomainError as error:
        raise _fail(error) from None


@import_app.command("events")
def import_events(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, CSV or Parquet.")
    ],
    source: Annotated[str, typer.Option(help="Name of the source the events belong to.")],
    file_format: Annotated[
        str | None, typer.Option("--format", help="jsonl, csv or parquet.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Events per transaction.")] = 500,
) -> None:
    """Import events through the same pipeline as the tracking API."""
    from ariane.services.imports import count_rows, read_events
    from ariane.services.ingest import Envelope
    from ariane.storage import access as access_store

    container = _container()
    with container.db.read() as conn:
        found = access_store.source_by_name(conn, source)
    if found is None:
        raise _fail(
            DomainError(f"no source named {source!r}; see `ariane sources list`", field="source")
        )
    totals = {"accepted": 0, "duplicates": 0, "quarantined": 0}
    try:
        total = count_rows(file, file_format)
        batch: list[Any] = []

        def flush() -> None:
            result = container.ingest.ingest(
                found.id, batch, Envelope(received_at=container.clock())
            )
            totals["accepted"] += result.accepted
            totals["duplicates"] += result.duplicates
            totals["quarantined"] += result.quarantined
            progress.advance(task, len(batch))
            batch.clear()

        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("import", total=total)
            for raw in read_events(file, file_format):
                batch.append(raw)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
    except DomainError as error:
        raise _fail(error) from None
    print(
        f"accepted {totals['accepted']}, duplicates {totals['duplicates']},"
        f" quarantined {totals['quarantined']}"
    )
