"""The in-app inbox: the message stored for the person, read by the app through the API.

The store keeps one message per send key, so a message handed twice is stored once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ariane.channels import Context, Message, Sent, register
from ariane.services.bus import GiveUp


class InboxChannel:
    carries_key = True

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        self.store: Callable[[Message], str] | None = context.inbox

    def send(self, message: Message) -> Sent:
        if self.store is None:
            raise GiveUp("this Ariane has no inbox to store the message in")
        return Sent(provider_id=self.store(message), detail="stored in the inbox")

    def close(self) -> None:
        pass


register("inbox", InboxChannel, default_address="profile_id")
