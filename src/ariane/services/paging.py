"""Page cursors: where a page of a list ended, opaque, and refused unless Ariane wrote it.

A cursor is the position of the last item of a page (ids, a time), the name of the list
it belongs to, and a digest of both, in URL-safe base64. Anything else given as a cursor
(garbage, a number, one edited or cut short, one from another list) is answered with one
error naming `cursor`, never with an empty or a first page that looks like an answer.

The digest's key is no secret: it tells a cursor Ariane wrote from a damaged one. A
cursor forged with it is still only a position in a list its holder may read anyway, and
each position is checked like any input before it reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

from ariane.domain.errors import DomainError

# The lists that page, each a name of its own: a cursor of one is refused by another.
PROFILES = "profiles"
TIMELINE = "timeline"
SEGMENT_MEMBERS = "segment-members"
SEGMENT_HISTORY = "segment-history"
LOYALTY_HISTORY = "loyalty-history"

Key = int | str

# Row ids are 64-bit integers on both databases.
MAX_ID = 2**63 - 1
# Longer than any position Ariane writes (a time and an Audience message id at most).
_MAX_LENGTH = 1024
_DIGEST_SIZE = 8
_KEY = b"ariane page cursor"
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST_SIZE, key=_KEY).digest()


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def invalid_cursor() -> DomainError:
    return DomainError(
        "cursor is not one Ariane gave for this list: start again without a cursor, or"
        " pass the next_cursor of the previous page as it was given",
        field="cursor",
    )


def encode(kind: str, *position: Key) -> str:
    """The cursor of `position` in the list `kind`."""
    payload = json.dumps([kind, *position], separators=(",", ":")).encode()
    return _text(payload + _digest(payload))


def decode(kind: str, cursor: str, size: int) -> tuple[Key, ...]:
    """The position of a cursor `encode(kind, ...)` wrote, of `size` ids and texts.
    Raises the error naming `cursor` for anything else."""
    if len(cursor) > _MAX_LENGTH or not _ALPHABET.fullmatch(cursor):
        raise invalid_cursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid_cursor() from None
    payload, digest = raw[:-_DIGEST_SIZE], raw[-_DIGEST_SIZE:]
    # A changed last character may decode to the same bytes: only the text Ariane wrote
    # is its cursor.
    if _text(raw) != cursor or not payload or not hmac.compare_digest(digest, _digest(payload)):
        raise invalid_cursor()
    try:
        found = json.loads(payload)
    except ValueError:
        raise invalid_cursor() from None
    if not isinstance(found, list) or len(found) != size + 1 or found[0] != kind:
        raise invalid_cursor()
    position = tuple(found[1:])
    for value in position:
        if not _is_key(value):
            raise invalid_cursor()
    return position


def decode_id(kind: str, cursor: str) -> int:
    """A position that is one row id."""
    (value,) = decode(kind, cursor, 1)
    if not isinstance(value, int):
        raise invalid_cursor()
    return value


def decode_text(kind: str, cursor: str) -> str:
    """A position that is one text, such as a profile id."""
    (value,) = decode(kind, cursor, 1)
    if not isinstance(value, str):
        raise invalid_cursor()
    return value


def _is_key(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 1 <= value <= MAX_ID
    return isinstance(value, str) and 0 < len(value) <= _MAX_LENGTH and "\x00" not in value
