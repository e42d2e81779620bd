"""The `ariane` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ariane.bootstrap import Container, build
from ariane.domain.errors import DomainError
from ariane.settings import load_settings

app = typer.Typer(help="Ariane, the real-time customer data platform.", no_args_is_help=True)
sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
tokens_app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)
profile_app = typer.Typer(help="Read profiles.", no_args_is_help=True)
import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
segments_app = typer.Typer(help="Segments and computed traits as code.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(profile_app, name="profile")
app.add_typer(import_app, name="import")
app.add_typer(segments_app, name="segments")
loyalty_app = typer.Typer(help="Loyalty programmes and their ledger.", no_args_is_help=True)
app.add_typer(loyalty_app, name="loyalty")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextmanager
def _container() -> Iterator[Container]:
    container = build(load_settings())
    try:
        yield container
    finally:
        container.close()


def _fail(error: DomainError) -> typer.Exit:
    where = f" ({error.field})" if error.field else ""
    err.print(f"[red]error{escape(where)}:[/red] {escape(error.message)}", soft_wrap=True)
    return typer.Exit(code=1)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from ariane.storage.migrate import upgrade

    with _container() as container:
        upgrade(container.db)
        console.print(f"database is up to date ({container.db.dialect.name})", markup=False)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface; ARIANE_HOST by default.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; ARIANE_PORT by default.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes; ARIANE_WORKERS by default.")
    ] = None,
) -> None:
    """Serve the tracking API (/v1), the admin API (/api) and /metrics."""
    from ariane.web.serving import CannotListen
    from ariane.web.serving import serve as run_server

    settings = load_settings()
    if workers is not None:
        # The worker processes read their settings from the environment they inherit.
        os.environ["ARIANE_WORKERS"] = str(workers)
    try:
        run_server(
            host or settings.host,
            settings.port if port is None else port,
            workers or settings.workers,
            os.environ.get("ARIANE_LOG_LEVEL", "info"),
        )
    except CannotListen as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=1) from None


@sources_app.command("create")
def sources_create(name: str) -> None:
    """Create a source; its write key is printed on the last line, and never again."""
    with _container() as container:
        try:
            source, write_key = container.access.create_source(name)
        except DomainError as error:
            raise _fail(error) from None
    console.print(f"source {source.name} created (id {source.id}); its write key:", markup=False)
    print(write_key)


@sources_app.command("list")
def sources_list() -> None:
    """List the sources: id, name and creation time, tab-separated."""
    with _container() as container:
        for source in container.access.list_sources():
            print(f"{source.id}\t{source.name}\t{source.created_at.isoformat()}")


@sources_app.command("rotate-key")
def sources_rotate_key(name: str) -> None:
    """Give a source a new write key, printed on the last line; the old one stops working."""
    with _container() as container:
        try:
            source, write_key = container.access.rotate_key(name)
        except DomainError as error:
            raise _fail(error) from None
    console.print(
        f"source {source.name} has a new write key; servers refuse the old one within"
        " 10 seconds. The new key:",
        markup=False,
        soft_wrap=True,
    )
    print(write_key)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="admin (read and change) or analyst (read only).")],
    name: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
) -> None:
    """Create an API token; it is printed on the last line, and never again."""
    with _container() as container:
        try:
            token, secret = container.access.create_token(role, name)
        except DomainError as error:
            raise _fail(error) from None
    console.print(f"{token.role} token {token.name} created (id {token.id}):", markup=False)
    print(secret)


@tokens_app.command("list")
def tokens_list() -> None:
    """List the API tokens: id, name, role and creation time, tab-separated; never secrets."""
    with _container() as container:
        for token in container.access.list_tokens():
            print(f"{token.id}\t{token.name}\t{token.role}\t{token.created_at.isoformat()}")


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The id from `tokens list`.")],
) -> None:
    """Revoke an API token: requests sending it are refused from now on."""
    with _container() as container:
        try:
            token = container.access.revoke_token(token_id)
        except DomainError as error:
            raise _fail(error) from None
    console.print(f"{token.role} token {token.name} (id {token.id}) revoked", markup=False)


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


@profile_app.command("show")
def profile_show(
    profile_id: Annotated[str | None, typer.Argument(help="A profile id.")] = None,
    email: Annotated[str | None, typer.Option(help="Find the profile by email.")] = None,
    id_type: Annotated[
        str | None, typer.Option("--type", help="Find it by any identifier type: user_id, ...")
    ] = None,
    value: Annotated[str | None, typer.Option(help="The identifier's value, with --type.")] = None,
) -> None:
    """Print the 360° view of one profile as JSON."""
    with _container() as container:
        profiles = container.profiles
        try:
            if profile_id is None:
                if email is not None:
                    id_type, value = "email", email
                if id_type is None or value is None:
                    raise DomainError(
                        "give a profile id, --email, or --type with --value", field="id"
                    )
                profile_id = profiles.lookup(id_type, value)
            view = profiles.view(profile_id)
        except DomainError as error:
            raise _fail(error) from None
    print(_dump(view))


@import_app.command("events")
def import_events(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, CSV or Parquet.")
    ],
    source: Annotated[str, typer.Option(help="Name of the source the events belong to.")],
    file_format: Annotated[
        str | None, typer.Option("--format", help="jsonl, csv or parquet (default: by suffix).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per transaction.")] = 500,
) -> None:
    """Import events through the same pipeline as the tracking API.

    Invalid rows are quarantined, rows already stored (same messageId) are skipped, and
    every event is resolved to a profile. Nested fields of CSV and Parquet files are
    named with dots: properties.revenue, context.traits.email.
    """
    from ariane.services.imports import EventImporter, count_rows

    with _container() as container:
        importer = EventImporter(container.db, container.access, container.ingest, container.clock)
        try:
            source_id = importer.source_id(source)
            total = count_rows(file, file_format)
            with Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            ) as progress:
                task = progress.add_task("import", total=total)
                report = importer.run(
                    file,
                    source_id,
                    file_format=file_format,
                    batch_size=batch_size,
                    progress=lambda done: progress.advance(task, done),
                )
        except DomainError as error:
            raise _fail(error) from None
    print(
        f"{report.rows} row{'' if report.rows == 1 else 's'}: accepted {report.accepted},"
        f" duplicates {report.duplicates}, quarantined {report.quarantined}"
    )


def _definitions(file: Path) -> Any:
    """A definitions file: JSON when it is named so, YAML otherwise (YAML reads JSON too)."""
    import yaml

    try:
        text = file.read_bytes()
        if file.suffix.lower() == ".json":
            return orjson.loads(text)
        return yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DomainError(f"cannot read {file.name}: {error}", field="file") from None


@segments_app.command("apply")
def segments_apply(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="YAML or JSON definitions."),
    ],
) -> None:
    """Create or update the computed traits and segments a file declares.

    Definitions already as declared are left alone, so applying a file twice changes
    nothing the second time; definitions the file does not mention are kept.
    """
    with _container() as container:
        try:
            outcome = container.segments.apply(_definitions(file))
        except DomainError as error:
            raise _fail(error) from None
    for change in ("created", "updated", "unchanged"):
        for name in outcome[change]:
            print(f"{change}\t{name}")
    print(
        f"{len(outcome['created'])} created, {len(outcome['updated'])} updated,"
        f" {len(outcome['unchanged'])} unchanged"
    )


@segments_app.command("list")
def segments_list() -> None:
    """List the segments: name, member count and description, tab-separated."""
    with _container() as container:
        for segment in container.segments.list_segments():
            description = " ".join(segment["description"].split())
            print(f"{segment['name']}\t{segment['members']}\t{description}")


@segments_app.command("export")
def segments_export(
    name: Annotated[str, typer.Argument(help="The segment's name or id.")],
    output: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write the file here, not to stdout.")
    ] = None,
    identifier: Annotated[
        list[str] | None,
        typer.Option(
            "--identifier",
            help="An identifier type (email): a column of each member's first value of it."
            " Repeat the option for several.",
        ),
    ] = None,
    trait: Annotated[
        list[str] | None,
        typer.Option(
            "--trait",
            help="A trait (plan, address.city): a column. Repeat the option for several.",
        ),
    ] = None,
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or parquet (default: parquet for an --output ending in .parquet, else"
            " csv). Parquet needs --output.",
        ),
    ] = None,
) -> None:
    """Write the members of a segment: profile_id, entered_at (UTC), then the identifiers
    and traits chosen, as CSV or Parquet."""
    from ariane.services.segment_exports import check_format

    parquet_file = output is not None and output.suffix.lower() == ".parquet"
    chosen = file_format or ("parquet" if parquet_file else "csv")
    with _container() as container:
        try:
            if check_format(chosen) == "parquet" and output is None:
                raise DomainError(
                    "Parquet is binary and is written to a file: give --output FILE",
                    field="output",
                )
            found = container.segment_exports.export(
                name, identifiers=identifier or [], traits=trait or []
            )
            with _output(output) as handle:
                for chunk in found.chunks(chosen):
                    handle.write(chunk)
        except DomainError as error:
            raise _fail(error) from None


@contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    """The file at `path`, or stdout (left open) when there is none."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        handle = path.open("wb")
    except OSError as error:
        raise DomainError(f"cannot write {path}: {error.strerror}", field="output") from None
    with handle:
        yield handle


@segments_app.command("discover")
def segments_discover(
    within: Annotated[
        list[str] | None,
        typer.Option(
            "--within",
            help="Windows after a person's first event to count in (ISO-8601); repeat the"
            " option for several. P3D and P14D by default.",
        ),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="Event names to count; repeat the option. By default the events sent by"
            " the most people.",
        ),
    ] = None,
    max_events: Annotated[int, typer.Option(help="How many event names to pick.")] = 12,
    max_groups: Annotated[int, typer.Option(help="The most groups to try.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed of k-means.")] = 0,
    save: Annotated[
        str | None,
        typer.Option(
            help="Save each group as a segment named PREFIX + group name; new people join"
            " the nearest group live."
        ),
    ] = None,
) -> None:
    """Find groups of people who behave alike, describe them, and save them as segments."""
    from ariane.services.discovery import DEFAULT_WINDOWS, discover

    with _container() as container:
        try:
            found = discover(
                container.db,
                days=within or DEFAULT_WINDOWS,
                events=event,
                max_events=max_events,
                max_groups=max_groups,
                seed=seed,
            )
            scores = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(found.k_scores.items()))
            print(f"{len(found.groups)} groups (silhouette by number of groups: {scores})")
            for group in found.groups:
                print(f"{group.name}\t{group.size}\t{group.description}")
            if save is not None:
                outcome = container.segments.apply({"segments": found.segment_definitions(save)})
                for change in ("created", "updated", "unchanged"):
                    for name in outcome[change]:
                        print(f"{change}\t{name}")
        except DomainError as error:
            raise _fail(error) from None


@loyalty_app.command("apply")
def loyalty_apply(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="A YAML or JSON programme."),
    ],
) -> None:
    """Create or update the programmes a file declares (one, or a list under
    `programmes`) and bring generated coupon pools up to their size.

    Applying a file twice changes nothing the second time; programmes the file does not
    mention are kept.
    """
    with _container() as container:
        try:
            outcome = container.programmes.apply(_definitions(file))
        except DomainError as error:
            raise _fail(error) from None
    for programme in outcome:
        generated = sum(programme["codes_generated"].values())
        codes = f", {generated} code(s) generated" if generated else ""
        print(f"{programme['change']}\t{programme['id']}\tversion {programme['version']}{codes}")


@loyalty_app.command("check")
def loyalty_check(
    programme: Annotated[str | None, typer.Option(help="Only this programme's members.")] = None,
) -> None:
    """Prove that every member's points agree with the ledger: each lot holds what it
    earned less what entries took, and each member's ledger sums to what their lots
    hold. Prints each disagreement and exits with 1 if there is any."""
    with _container() as container:
        found = container.loyalty.discrepancies(programme)
    for prog, member, what in found:
        print(f"{prog}\t{member}\t{what}")
    if found:
        err.print(f"[red]{len(found)} disagreement(s) between lots and ledger[/red]")
        raise typer.Exit(code=1)
    print("lots and ledger agree")


destinations_app = typer.Typer(
    help="Destinations: other tools that receive what Ariane knows.", no_args_is_help=True
)
app.add_typer(destinations_app, name="destinations")
journeys_app = typer.Typer(
    help="Journeys: who enters, what they are sent and when.", no_args_is_help=True
)
app.add_typer(journeys_app, name="journeys")
channels_app = typer.Typer(
    help="Channels, message templates and the sending rules.", no_args_is_help=True
)
app.add_typer(channels_app, name="channels")
outbox_app = typer.Typer(help="What the bus's handlers gave up on.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")


@destinations_app.command("apply")
def destinations_apply(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="YAML or JSON, under `destinations`."),
    ],
) -> None:
    """Create or update the destinations a file declares; all are checked before any is
    saved, and applying a file twice changes nothing the second time."""
    with _container() as container:
        try:
            outcome = container.destinations.apply(_definitions(file))
        except DomainError as error:
            raise _fail(error) from None
    for destination in outcome:
        print(f"{destination['change']}\t{destination['id']}\tversion {destination['version']}")


@destinations_app.command("list")
def destinations_list() -> None:
    """Each destination: id, type, delivered, failed, parked, tab-separated."""
    with _container() as container:
        for found in container.destinations.every():
            print(
                f"{found['id']}\t{found['type']}\tdelivered {found['delivered']}"
                f"\tfailed {found['failed']}\tparked {found['parked']}"
            )


@journeys_app.command("apply")
def journeys_apply(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="YAML or JSON, under `journeys` (and `channels`, `templates`).",
        ),
    ],
) -> None:
    """Create or update the journeys (and the channels and templates) a file declares;
    all are checked before any is saved. A changed journey gets a new version."""
    with _container() as container:
        try:
            outcome = container.journeys.apply(_definitions(file))
        except DomainError as error:
            raise _fail(error) from None
    for journey in outcome:
        print(f"{journey['change']}\t{journey['id']}\tversion {journey['version']}")


@journeys_app.command("list")
def journeys_list() -> None:
    """Each journey: id, version, enabled, tab-separated."""
    with _container() as container:
        for found in container.journeys.every():
            state = "enabled" if found["enabled"] else "disabled"
            print(f"{found['id']}\tversion {found['version']}\t{state}")


@channels_app.command("apply")
def channels_apply(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="YAML or JSON: `channels`, `templates`, `frequency_caps`, `global_control`.",
        ),
    ],
) -> None:
    """Create or update the channels, templates and sending rules a file declares."""
    with _container() as container:
        try:
            outcome = container.channels.apply(_definitions(file))
        except DomainError as error:
            raise _fail(error) from None
    for kind, done in outcome.items():
        for found in done:
            print(f"{found['change']}\t{kind[:-1]} {found['name']}\tversion {found['version']}")


@channels_app.command("test")
def channels_test(
    name: Annotated[str, typer.Argument(help="The channel's name.")],
    to: Annotated[str, typer.Option(help="The address to send to.")],
    template: Annotated[
        str | None, typer.Option(help="A template's name; else a short test text.")
    ] = None,
) -> None:
    """Send one message now on a channel, outside any journey."""
    body: dict[str, Any] = {"to": to}
    if template is not None:
        body["template"] = template
    with _container() as container:
        try:
            sent = container.messaging.send_test(name, body)
        except DomainError as error:
            raise _fail(error) from None
    print(f"sent\t{sent['send_key']}\t{sent['provider_id'] or ''}")


@outbox_app.command("parked")
def outbox_parked(
    handler: Annotated[str | None, typer.Option(help="Only this handler's.")] = None,
) -> None:
    """What handlers gave up on: id, handler, event id, tries and error, tab-separated."""
    with _container() as container:
        for parked in container.bus.parked(handler=handler, limit=10_000):
            error = " ".join(str(parked["error"]).split())
            print(
                f"{parked['id']}\t{parked['handler']}\t{parked['event_id']}"
                f"\t{parked['attempts']}\t{error}"
            )


@outbox_app.command("replay")
def outbox_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Parked ids; none: all.")] = None,
    handler: Annotated[str | None, typer.Option(help="Only this handler's.")] = None,
) -> None:
    """Give parked entries to their handlers again. Exits with 1 if any failed again."""
    with _container() as container:
        done = container.bus.replay(ids or None, handler)
    for replayed in done.replayed:
        print(f"replayed\t{replayed}")
    for failed in done.failed:
        print(f"failed\t{failed['id']}\t{failed['error']}")
    if done.failed:
        raise typer.Exit(code=1)
