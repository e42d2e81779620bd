"""Composition root: the only place that builds things. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ariane.domain.clock import utcnow
from ariane.services.access import AccessService
from ariane.services.coupons import CouponService
from ariane.services.earning import EarnService
from ariane.services.ingest import IngestService
from ariane.services.loyalty import LoyaltyService
from ariane.services.loyalty_events import LoyaltyEvents
from ariane.services.privacy import PrivacyService
from ariane.services.profiles import ProfileService
from ariane.services.programmes import ProgrammeService
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
    programmes: ProgrammeService
    loyalty: LoyaltyService
    coupons: CouponService
    loyalty_events: LoyaltyEvents
    earning: EarnService

    def close(self) -> None:
        self.db.dispose()


def build(settings: Settings, clock: Callable[[], datetime] = utcnow) -> Container:
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    segments = SegmentService(db, clock)
    programmes = ProgrammeService(db, clock)
    ingest = IngestService(db, settings, clock, segments, listened=programmes.listened)
    profiles = ProfileService(db, settings, clock, segments)
    loyalty = LoyaltyService(db, clock, programmes)
    return Container(
        settings=settings,
        db=db,
        clock=clock,
        access=AccessService(db, clock),
        ingest=ingest,
        profiles=profiles,
        privacy=PrivacyService(db, clock),
        segments=segments,
        programmes=programmes,
        loyalty=loyalty,
        coupons=CouponService(db, clock),
        loyalty_events=LoyaltyEvents(db, clock, ingest),
        earning=EarnService(db, clock, programmes, loyalty, segments, profiles),
    )
