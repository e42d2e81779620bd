"""Composition root: the only place that builds things. Nothing is built at import time."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ariane.destinations import Sender, senders
from ariane.domain.clock import utcnow
from ariane.services.access import AccessService
from ariane.services.bus import Dispatcher
from ariane.services.channels import Channels
from ariane.services.coupons import CouponService
from ariane.services.destinations import DestinationService
from ariane.services.earning import EarnService
from ariane.services.inbox import Inbox
from ariane.services.ingest import IngestService
from ariane.services.journey_engine import JourneyEngine
from ariane.services.journeys import Journeys
from ariane.services.loyalty import LoyaltyService
from ariane.services.loyalty_timeline import LoyaltyTimeline
from ariane.services.messaging import Links, Messaging
from ariane.services.privacy import PrivacyService
from ariane.services.profiles import ProfileService
from ariane.services.programmes import ProgrammeService
from ariane.services.segment_exports import SegmentExportService
from ariane.services.segments import SegmentService
from ariane.settings import Settings
from ariane.storage import channels as channel_store
from ariane.storage.database import Database


@dataclass
class Container:
    settings: Settings
    db: Database
    clock: Callable[[], datetime]
    access: AccessService
    ingest: IngestService
    profiles: ProfileService
    privacy: PrivacyService
    segments: SegmentService
    segment_exports: SegmentExportService
    programmes: ProgrammeService
    loyalty: LoyaltyService
    coupons: CouponService
    loyalty_timeline: LoyaltyTimeline
    earning: EarnService
    destinations: DestinationService
    senders: dict[str, Sender]
    inbox: Inbox
    channels: Channels
    journeys: Journeys
    journey_engine: JourneyEngine
    messaging: Messaging
    bus: Dispatcher

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()
        self.channels.close()
        self.db.dispose()


def build(settings: Settings, clock: Callable[[], datetime] = utcnow) -> Container:
    from ariane.handlers import handler_table

    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    segments = SegmentService(db, clock)
    programmes = ProgrammeService(db, clock)
    ingest = IngestService(db, settings, clock, segments)
    profiles = ProfileService(db, settings, clock, segments)
    loyalty = LoyaltyService(db, clock, programmes)
    made = senders(clock)
    destinations = DestinationService(db, clock, made)
    inbox = Inbox(db, clock, settings.inbox_secret)
    channels = Channels(db, clock, inbox.deliver)
    journeys = Journeys(db, clock, segments, channels)
    links = _links(db, settings, clock)
    segments.told_at_once = lambda: journeys.segments_read() | destinations.audience_segments()
    container = Container(
        settings=settings,
        db=db,
        clock=clock,
        access=AccessService(db, clock),
        ingest=ingest,
        profiles=profiles,
        privacy=PrivacyService(db, clock),
        segments=segments,
        segment_exports=SegmentExportService(db, clock, segments, profiles),
        programmes=programmes,
        loyalty=loyalty,
        coupons=CouponService(db, clock),
        loyalty_timeline=LoyaltyTimeline(db, clock, ingest),
        earning=EarnService(db, clock, programmes, loyalty, segments, profiles),
        destinations=destinations,
        senders=made,
        inbox=inbox,
        channels=channels,
        journeys=journeys,
        journey_engine=JourneyEngine(db, clock, journeys, channels, segments),
        messaging=Messaging(db, clock, channels, segments, links, profiles),
        bus=Dispatcher(db, clock, lambda: handler_table(container)()),
    )
    return container


def _links(db: Database, settings: Settings, clock: Callable[[], datetime]) -> Callable[[], Links]:
    """The signer of the links in messages, with the secret kept in the database (made
    the first time it is needed, the same for every process)."""
    made: list[Links] = []

    def links() -> Links:
        if not made:
            fresh = secrets.token_urlsafe(32)
            secret = db.write(lambda conn: channel_store.link_secret(conn, fresh, clock()))
            made.append(Links(settings.public_url.rstrip("/"), secret.encode()))
        return made[0]

    return links
