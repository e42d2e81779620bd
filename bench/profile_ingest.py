"""Profile the ingestion service in-process (no HTTP) with pyinstrument.

.venv/bin/python bench/profile_ingest.py --backend sqlite --events 50000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import orjson
from pyinstrument import Profiler

from ariane.bootstrap import build
from ariane.domain.clock import utcnow
from ariane.services.ingest import Envelope
from ariane.settings import Settings
from ariane.storage.migrate import upgrade
from bench.ingest import drop_postgres, generate, postgres_database
from bench.segments import definitions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--segments", action="store_true", help="with bench/segments.py's 100 segments"
    )
    args = parser.parse_args()
    events = generate(args.people, args.events)
    # Bodies go through JSON as they would over HTTP.
    batches = [
        orjson.loads(orjson.dumps(events[i : i + args.batch]))
        for i in range(0, len(events), args.batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        name = ""
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/ariane.db"
        else:
            url, name = postgres_database()
        container = build(Settings(database_url=url, segment_timer_interval=0))
        try:
            upgrade(container.db)
            if args.segments:
                container.segments.apply(definitions(random.Random(3)))
            source, _ = container.access.create_source("profile")
            profiler = Profiler(interval=0.0005)
            if not args.no_profile:
                profiler.start()
            started = time.perf_counter()
            for batch in batches:
                container.ingest.ingest(source.id, batch, Envelope(received_at=utcnow()))
            elapsed = time.perf_counter() - started
            if not args.no_profile:
                profiler.stop()
        finally:
            container.close()
            if name:
                drop_postgres(name)
    print(f"{len(events) / elapsed:.0f} events/s in-process ({args.backend})")
    if not args.no_profile:
        print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
