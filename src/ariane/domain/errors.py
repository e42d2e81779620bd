"""Errors a user can act on: each names the field at fault and what to do."""

from __future__ import annotations


class DomainError(Exception):
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidEvent(DomainError):
    code = "invalid_event"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Forbidden(DomainError):
    code = "forbidden"


class ProviderFailed(DomainError):
    """A channel's provider did not take a message sent on demand (a test send)."""

    code = "provider_failed"
