"""Composition root: the only place that builds things. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ariane.destinations import Sender, senders
from ariane.domain.clock import utcnow
from ariane.services.access import AccessService
from ariane.services.bus import Dispatcher
from ariane.services.coupons import CouponService
from ariane.services.destinations import DestinationService
from ariane.services.earning import EarnService
from ariane.services.ingest import IngestService
from ariane.services.loyalty import LoyaltyService
from ariane.services.loyalty_timeline import LoyaltyTimeline
from ariane.services.privacy import PrivacyService
from ariane.services.profiles import ProfileService
from ariane.services.programmes import ProgrammeService
from ariane.services.segment_exports import SegmentExportService
from ariane.services.segments import SegmentService
from ariane.settings import Settings
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
    bus: Dispatcher

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()
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
        bus=Dispatcher(db, clock, lambda: handler_table(container)()),
    )
    return container
