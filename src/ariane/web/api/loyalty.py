"""/api/loyalty: programmes as code, members' points, rewards and coupons, for the admin
and, in real time, for tills and the web.

Every request that moves points or a coupon carries an `Idempotency-Key` header: sent
again with the same key, it moves nothing more and answers what it answered first.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from ariane.bootstrap import Container
from ariane.domain.errors import DomainError
from ariane.domain.programmes import MAX_POINTS
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api/loyalty", tags=["loyalty"], route_class=CheckedRoute)

_PROGRAMME_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such programme, reward or pool."},
    422: {"description": "The definition is invalid; `field` is the path of the faulty key."},
}
_MOVEMENT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such programme, profile or reward."},
    409: {
        "description": "Not enough points (`not_enough_points`), the reward cannot be bought"
        " now (`reward_unavailable`), or the Idempotency-Key was used for another request."
    },
    422: {"description": "A value is invalid; `field` names it."},
}
_COUPON_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such coupon."},
    409: {
        "description": "The coupon is burned already (the message says when and where), not"
        " issued, expired, not burned (for a rollback), or the Idempotency-Key was used for"
        " another request."
    },
    422: {"description": "A value is invalid, or the Idempotency-Key header is missing."},
}
_KEY = Header(
    None,
    alias="Idempotency-Key",
    description="1 to 200 characters, the same for every retry of one request.",
)
_EXAMPLE_PROGRAMME = {
    "name": "Club Bijoux",
    "currency": "points",
    "expiry": {"return_window": "P30D", "validity": "P365D"},
    "rewards": [{"id": "voucher-10", "cost": 500, "per_member": 1, "pool": "voucher-10"}],
    "coupon_pools": [{"id": "voucher-10", "generate": {"count": 1000, "prefix": "BJX-"}}],
}


class CodesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codes: list[str] = Field(description="1 to 100,000 codes.", examples=[["SUMMER-0001"]])


class PointsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: int = Field(
        gt=0, le=MAX_POINTS, description="A whole number from 1 to 10**12.", examples=[120]
    )
    reference: str | None = Field(
        None, max_length=200, description="What the movement is for: a receipt, an order id."
    )


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = Field(description="The track event's name.", examples=["Order Completed"])
    properties: dict[str, Any] = Field(
        default_factory=dict,
        description="Its properties; a sale's `order_id`, `products` ([{sku, category,"
        " price, quantity}]), `revenue` or `total`, `shipping`, `tax`.",
        examples=[
            {
                "order_id": "R-1187",
                "products": [{"sku": "RING-42", "category": "rings", "price": 120, "quantity": 1}],
                "shipping": 5,
            }
        ],
    )


class ReturnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(description="The order whose items come back.", examples=["R-1187"])
    products: list[dict[str, Any]] | None = Field(
        None,
        description="The items returned ({sku, category, price, quantity}); without them,"
        " the whole order.",
        examples=[[{"sku": "RING-42", "category": "rings", "price": 120, "quantity": 1}]],
    )


class SimulateBody(EventBody):
    programme: str = Field(description="The programme's id.", examples=["club"])
    profile_id: str | None = Field(
        None, description="A member, to read their segments, limits and conditions."
    )


class AdjustBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: int = Field(
        ge=-MAX_POINTS,
        le=MAX_POINTS,
        description="Given (above 0) or taken (below 0), at most 10**12 either way.",
        examples=[200],
    )
    reason: str | None = Field(
        None, max_length=200, description="Why, for the history.", examples=["delivery late"]
    )


class TransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="The profile id of the member who receives them.")
    points: int = Field(
        gt=0, le=MAX_POINTS, description="A whole number from 1 to 10**12.", examples=[300]
    )
    reference: str | None = Field(None, max_length=200)


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    survivor: str = Field(description="The profile id that remains.")
    absorbed: str = Field(description="The profile id joined into it.")
    reason: str = Field(
        "merged through the loyalty API",
        min_length=1,
        max_length=200,
        description="Why, kept with the merge.",
        examples=["same card at the till and on the web"],
    )


class RedeemBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reward: str = Field(description="The reward's id in the programme.", examples=["voucher-10"])


class BurnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(
        description="Where it is burned: till, web, app, ... (1 to 32 characters).",
        examples=["till"],
    )
    location: str | None = Field(None, description="The shop or site.", examples=["paris-04"])
    reference: str | None = Field(None, description="The receipt or order.", examples=["R-1187"])


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(None, description="Why: the cancelled receipt or order.")


# --- programmes ---------------------------------------------------------------------------


@router.get("/programmes")
def list_programmes(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Every programme, with its definition and version."""
    return app.programmes.all()


@router.get("/programmes/{programme}", responses=_PROGRAMME_ERRORS)
def get_programme(
    programme: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """The programme's definition, how many of each reward with a stock were bought, and
    how many codes each pool holds free, issued and burned."""
    return app.programmes.get(programme)


@router.put("/programmes/{programme}", responses=_PROGRAMME_ERRORS)
def put_programme(
    programme: str,
    definition: dict[str, Any] = Body(examples=[_EXAMPLE_PROGRAMME]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or replace the programme, as `ariane loyalty apply` does; generated pools
    are brought up to their size."""
    return app.programmes.save(programme, definition)


@router.post("/programmes/{programme}/pools/{pool}/codes", responses=_PROGRAMME_ERRORS)
def import_codes(
    programme: str,
    pool: str,
    body: CodesBody,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Add codes to a pool. Codes it holds already are left alone; a code another pool
    holds refuses the whole request (409), naming it."""
    return app.programmes.import_codes(programme, pool, body.codes)


# --- members ------------------------------------------------------------------------------


@router.get("/programmes/{programme}/members", responses=_MOVEMENT_ERRORS)
def find_member(
    programme: str,
    card: str | None = Query(None, description="A loyalty card number (`loyalty_card`)."),
    email: str | None = Query(None, description="An email address, in any case."),
    phone: str | None = Query(None, description="A phone number, in any usual form."),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The balance of the member a till or the web knows by card, email or phone (one of
    them), as for the member's own route."""
    # A card is an identifier of the type `loyalty_card` (see docs/identity.md).
    asked = {"loyalty_card": card, "email": email, "phone": phone}
    given = [(kind, value) for kind, value in asked.items() if value is not None]
    if len(given) != 1:
        raise DomainError("give exactly one of card, email or phone", field="card")
    kind, value = given[0]
    return app.loyalty.balance(programme, app.profiles.lookup(kind, value))


@router.get("/programmes/{programme}/members/{profile_id}", responses=_MOVEMENT_ERRORS)
def balance(
    programme: str,
    profile_id: str,
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The member's points: available, pending, the next expiry; and their coupons."""
    return app.loyalty.balance(programme, profile_id)


@router.get("/programmes/{programme}/members/{profile_id}/history", responses=_MOVEMENT_ERRORS)
def history(
    programme: str,
    profile_id: str,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The member's ledger entries, newest first."""
    return app.loyalty.history(programme, profile_id, limit=limit, cursor=cursor)


@router.post("/programmes/{programme}/members/{profile_id}/earn", responses=_MOVEMENT_ERRORS)
def earn(
    programme: str,
    profile_id: str,
    body: PointsBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Give the member points, as one lot under the programme's expiry policy."""
    return app.loyalty.earn(
        programme, profile_id, body.points, _ledger_key(key), reference=body.reference
    )


@router.post("/programmes/{programme}/members/{profile_id}/spend", responses=_MOVEMENT_ERRORS)
def spend(
    programme: str,
    profile_id: str,
    body: PointsBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Take points from the member's oldest spendable lots, or nothing (409)."""
    return app.loyalty.spend(
        programme, profile_id, body.points, _ledger_key(key), reference=body.reference
    )


@router.post("/programmes/{programme}/members/{profile_id}/events", responses=_MOVEMENT_ERRORS)
def record_event(
    programme: str,
    profile_id: str,
    body: EventBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """A sale (or any event the earn rules read) from a till or the web: the rules
    applied now, and the event put on the member's timeline."""
    return app.earning.record(programme, profile_id, body.event, body.properties, _ledger_key(key))


@router.post("/programmes/{programme}/members/{profile_id}/returns", responses=_MOVEMENT_ERRORS)
def return_items(
    programme: str,
    profile_id: str,
    body: ReturnBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Items of an order returned, or the whole order refunded: the points they earned
    taken back in proportion, never below zero."""
    return app.earning.return_items(
        programme, profile_id, body.order_id, body.products, _ledger_key(key)
    )


@router.post("/members/merge", responses=_MOVEMENT_ERRORS)
def merge_members(
    body: MergeBody, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    """Join a shop account and a web account known to be one person: their points,
    history, coupons and identifiers become the survivor's, and its tiers are looked at
    again. Refused (409) when together they hold two user ids."""
    return app.profiles.merge(body.survivor, body.absorbed, reason=body.reason)


@router.post("/simulate", responses=_MOVEMENT_ERRORS)
def simulate(
    body: SimulateBody, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """What an event would earn under a programme's rules, changing nothing (a read: an
    analyst may, as for a segment's preview)."""
    return app.earning.simulate(body.programme, body.event, body.properties, body.profile_id)


@router.post("/programmes/{programme}/members/{profile_id}/adjust", responses=_MOVEMENT_ERRORS)
def adjust(
    programme: str,
    profile_id: str,
    body: AdjustBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Give or take points by hand; taken only from what the member can spend now."""
    return app.loyalty.adjust(
        programme, profile_id, body.points, _ledger_key(key), reason=body.reason
    )


@router.post("/programmes/{programme}/members/{profile_id}/transfer", responses=_MOVEMENT_ERRORS)
def transfer(
    programme: str,
    profile_id: str,
    body: TransferBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Move points from this member to another, oldest first, or nothing (409)."""
    return app.loyalty.transfer(
        programme, profile_id, body.to, body.points, _ledger_key(key), reference=body.reference
    )


@router.post("/programmes/{programme}/members/{profile_id}/redeem", responses=_MOVEMENT_ERRORS)
def redeem(
    programme: str,
    profile_id: str,
    body: RedeemBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Buy a reward with points; its coupon code, when it has a pool."""
    return app.loyalty.redeem(programme, profile_id, body.reward, _ledger_key(key))


# --- coupons ------------------------------------------------------------------------------


@router.get("/coupons/{code}", responses=_COUPON_ERRORS)
def coupon(code: str, app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Who holds the coupon, until when, and the burn in force if any."""
    return app.coupons.show(code)


@router.post("/coupons/{code}/burn", responses=_COUPON_ERRORS)
def burn(
    code: str,
    body: BurnBody,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Burn the coupon once; a second burn is a 409 naming when and where the first was."""
    return app.coupons.burn(
        code, key, channel=body.channel, location=body.location, reference=body.reference
    )


@router.post("/coupons/{code}/rollback", responses=_COUPON_ERRORS)
def rollback(
    code: str,
    body: RollbackBody | None = None,
    key: str | None = _KEY,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Undo the burn in force (a cancelled sale): the coupon can be burned again."""
    return app.coupons.rollback(code, key, reference=None if body is None else body.reference)


def _ledger_key(key: str | None) -> str:
    """The Idempotency-Key header, which the ledger keeps as the entry's key."""
    if not key:
        raise DomainError(
            "send an Idempotency-Key header, the same for every retry of one movement",
            field="Idempotency-Key",
        )
    return key
