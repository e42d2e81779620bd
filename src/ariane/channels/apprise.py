"""Apprise: one channel type for the many services it speaks to (SMS gateways, Telegram,
Slack, Discord, ntfy, a JSON endpoint, ...), each named by an Apprise URL.

The channel's `url` is a template: `{address}` in it is replaced by the person's address,
URL-quoted (`tgram://bottoken/{address}`). The URL holds the service's tokens, so it is a
secret: an error names only its scheme. Apprise passes no key of ours to the service,
which therefore cannot drop a message handed twice.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import apprise

from ariane.channels import Context, Message, Sent, register
from ariane.services.bus import GiveUp

_plugins_loaded = threading.Lock()


class AppriseChannel:
    carries_key = False

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        url = settings.get("url")
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(
                "apprise channel: the setting 'url' must be an Apprise URL, "
                "as in json://host/path/{address}"
            )
        self.url = url
        self.scheme = url.partition("://")[0].lower()
        if self.scheme not in _services():
            raise ValueError(f"apprise channel: Apprise has no service {self.scheme}://")
        self.title = settings.get("title") or ""

    def send(self, message: Message) -> Sent:
        url = self.url.replace("{address}", quote(message.address, safe=""))
        service = apprise.Apprise.instantiate(url)
        if service is None:
            raise GiveUp(
                f"apprise cannot use the channel's {self.scheme}:// URL with this address: "
                "check the URL's form for that service and the person's address"
            )
        notifier = apprise.Apprise()
        notifier.add(service)
        with notifier.notify(
            body=message.text,
            title=message.subject or self.title,
            body_format=apprise.NotifyFormat.TEXT,
        ) as result:
            if result:
                return Sent(detail=f"{self.scheme}:// took it")
            said = "; ".join(entry.message for entry in result.logs())
        raise RuntimeError(
            f"apprise could not send to {self.scheme}://: "
            f"{_redact(said, url) or result.status.name}"
        )

    def close(self) -> None:
        pass


def _services() -> Any:
    """Apprise's services, loaded once. Some of its plugins import a module Python
    deprecates (`imghdr`), which would fail a run that makes warnings errors."""
    manager = apprise.NotificationManager()  # type: ignore[no-untyped-call]
    with _plugins_loaded, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="apprise")
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        manager.load_modules()  # type: ignore[no-untyped-call]
    return manager


def _redact(text: str, url: str) -> str:
    """`text` without any part of `url` long enough to be a token."""
    parts = url.partition("://")[2]
    for separator in "/:@?&=#":
        parts = parts.replace(separator, " ")
    for part in sorted(parts.split(), key=len, reverse=True):
        if len(part) >= 6:
            text = text.replace(part, "…")
    return text


register(
    "apprise",
    AppriseChannel,
    settings=("title",),
    required=("url",),
    secrets=("url",),
    default_address=None,
)
