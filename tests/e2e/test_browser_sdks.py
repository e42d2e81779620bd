"""Segment's analytics-next and RudderStack's JavaScript SDK, from their published bundles,
in Debian's Chromium, on a website of another origin: in each of their delivery modes,
every event reaches Ariane once, with the anonymous id of the SDK's cookie, and nothing is
sent anywhere else.

Across a 503: on PostgreSQL, the server's connections are terminated once the SDK is
ready (`pg_terminate_backend`), so that the next request finds its connection dead and
Ariane answers 503; the SDK sends again and the event is stored once. On SQLite there is
no quick real way to it: Ariane's own processes take turns at the database through a lock
of their own, and another process holding the database makes Ariane wait out its busy
timeout of 60 s before answering 503. So the modes run on SQLite without the 503.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ariane.bootstrap import build
from ariane.settings import Settings
from ariane.storage.tables import events, quarantine
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, NpmPackage, Site, unavailable
from tests.e2e.conftest import Server
from tests.e2e.test_readme import blocks

pytestmark = pytest.mark.slow

ANALYTICS_NEXT = NpmPackage(
    "@segment/analytics-next",
    "1.84.3",
    "sha512-5l7cPBzScxhfJ0zdcKQI4daDvMIWWUk7hClT1xGRelnHUltIEoQ9w8+ZpFPoWJMpX8D7IA1nVAfJbpiKi3XaKw==",
)
RUDDERSTACK = NpmPackage(
    "@rudderstack/analytics-js",
    "3.34.1",
    "sha512-cci768CvaM64Wr/MDDtLF8K49aPy7TwwfwL9G1a2SSfgwL4XfVfGNVT//Mv8yph0a14pPc/Nf5HDWhVjAD5vQg==",
)
# analytics-next's build for pages that load it themselves (`AnalyticsNext.AnalyticsBrowser`).
ANALYTICS_NEXT_UMD = "dist/umd/index.js"
# RudderStack's build that carries its plugins: the others load them from RudderStack's CDN.
RUDDERSTACK_BUNDLED = "dist/npm/modern/bundled/umd/index.js"
# Where the README's RudderStack snippet expects the site's copy.
RUDDERSTACK_PATH = "/js/rudderstack-analytics.js"
README_HOST = "https://ariane.example.com"
README_KEY = "YOUR_WRITE_KEY"
# What Ariane logs for each request it answers 503.
UNAVAILABLE = "cannot take events now"

# Every page sends a page view once loaded, and these when the test says so.
SEND = """
window.send = function () {
  analytics.identify("ada-42", {email: "ada@example.com"});
  analytics.track("Product Viewed", {sku: "A1"});
  analytics.track("Order Completed", {revenue: 42.5});
};
"""
# Notes the address of each beacon, which Playwright does not show, then sends it.
BEACON_NOTES = """
const sendBeacon = navigator.sendBeacon.bind(navigator);
navigator.sendBeacon = function (url, data) {
  const sent = JSON.parse(localStorage.getItem("beacons") || "[]");
  localStorage.setItem("beacons", JSON.stringify(sent.concat([String(url)])));
  return sendBeacon(url, data);
};
"""
EXPECTED = Counter(
    [("page", None), ("identify", None), ("track", "Product Viewed"), ("track", "Order Completed")]
)


@pytest.fixture(scope="session")
def analytics_next() -> dict[str, bytes]:
    return ANALYTICS_NEXT.files()


@pytest.fixture(scope="session")
def rudderstack() -> dict[str, bytes]:
    return RUDDERSTACK.files()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"no {CHROMIUM}: `apt-get install chromium`, as .ci/run does")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: `make install`")
    with sync_playwright() as playwright:
        # Each browser has its own new profile, removed when it closes.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def running(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """Ariane, on the database `db_url` made ready, without its background loops: they
    would meet the terminated connections first, and the SDK's request would then find
    new ones and no 503."""
    server = Server(db_url, tmp_path / "server.log", env={"ARIANE_RUN_LOOPS": "false"})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def write_key(running: Server) -> str:
    container = build(Settings(database_url=running.db_url))
    try:
        return container.access.create_source("website")[1]
    finally:
        container.close()


@pytest.fixture
def site() -> Iterator[Site]:
    with Site().serving() as serving:
        yield serving


class Visit:
    """A browser's visit to the site: what its pages sent to Ariane, and where else."""

    def __init__(self, browser: Any, site: Site, ariane: Server) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.site = site
        self.ariane = ariane
        self.message_ids: list[str] = []
        self.elsewhere: list[str] = []
        self.context.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        if request.url.startswith(self.ariane.url):
            if request.method == "POST" and request.post_data_buffer:
                body = json.loads(request.post_data_buffer)
                sent = body.get("batch", [body])
                self.message_ids.extend(event["messageId"] for event in sent)
        elif not request.url.startswith(self.site.url):
            self.elsewhere.append(request.url)

    def wait_for_requests(self, count: int) -> None:
        for _ in range(1000):
            if len(self.message_ids) >= count:
                return
            self.wait(0.01)
        raise AssertionError(f"the page sent {len(self.message_ids)} events, not {count}")

    def open(self, path: str, ready: str) -> None:
        self.page.goto(self.site.url + path)
        self.page.wait_for_function(ready, timeout=10_000)

    def cookie(self, name: str) -> str:
        [value] = [c["value"] for c in self.context.cookies() if c["name"] == name]
        return urllib.parse.unquote(value)

    def wait(self, seconds: float) -> None:
        # The browser's events reach `_seen` only while Playwright is called.
        self.page.wait_for_timeout(seconds * 1000)


@pytest.fixture
def visit(browser: Any, site: Site, running: Server) -> Iterator[Visit]:
    opened = Visit(browser, site, running)
    yield opened
    opened.context.close()


def analytics_next_page(
    site: Site, files: dict[str, bytes], ariane: Server, write_key: str, options: str = "{}"
) -> None:
    """A page that loads analytics-next from its own copy, reading its settings from Ariane."""
    site.script("/analytics-next.js", files[ANALYTICS_NEXT_UMD])
    site.page(
        "/",
        f"""<!doctype html><title>Shop</title><script src="/analytics-next.js"></script>
<script>
  window.analytics = AnalyticsNext.AnalyticsBrowser.load(
    {{writeKey: {json.dumps(write_key)}, cdnURL: {json.dumps(ariane.url)}}}, {options});
  analytics.ready(function () {{ window.ready = true; }});
  analytics.page();
  {SEND}
</script>""",
    )


def segment_delivery(strategy: str, **config: Any) -> str:
    """analytics-next's load options for one of its ways of sending."""
    delivery = {"strategy": strategy, "config": config}
    return json.dumps({"integrations": {"Segment.io": {"deliveryStrategy": delivery}}})


def rudderstack_page(
    site: Site, files: dict[str, bytes], ariane: Server, write_key: str, options: str
) -> None:
    site.script(RUDDERSTACK_PATH, files[RUDDERSTACK_BUNDLED])
    site.page(
        "/",
        f"""<!doctype html><title>Shop</title><script src="{RUDDERSTACK_PATH}"></script>
<script>
  new rudderanalytics.RudderAnalytics().load({json.dumps(write_key)}, {json.dumps(ariane.url)},
    Object.assign({{configUrl: {json.dumps(ariane.url)}}}, {options}));
  rudderanalytics.ready(function () {{ window.ready = true; }});
  rudderanalytics.page();
  {SEND.replace("analytics.", "rudderanalytics.")}
</script>""",
    )


def readme_snippet(language: str, index: int, ariane: Server, write_key: str) -> str:
    code = [code for lang, code in blocks(language)][index]
    return code.replace(README_HOST, ariane.url).replace(README_KEY, write_key)


class Outage:
    """On PostgreSQL, every connection of Ariane's terminated: its next request finds its
    connection dead, and Ariane answers it 503. On SQLite, nothing (see above)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.before = self.answered()
        self.real = server.db_url.startswith("postgresql")
        if self.real:
            engine = sa.create_engine(server.db_url, isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    ended = conn.execute(
                        sa.text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar()
            finally:
                engine.dispose()
            assert ended, "Ariane had no connection to PostgreSQL to take away"

    def answered(self) -> int:
        """The 503s Ariane has answered, from its log."""
        return self.server.log.read_text().count(UNAVAILABLE)

    def assert_answered_503(self, visit: Visit) -> None:
        if not self.real:
            return
        for _ in range(50):
            if self.answered() > self.before:
                return
            visit.wait(0.1)
        raise AssertionError("no request got a 503 after Ariane's connections were ended")


def stored(db_url: str) -> list[dict[str, Any]]:
    """The events stored; there is none in quarantine."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar() == 0
            return [row.payload for row in conn.execute(sa.select(events.c.payload))]
    finally:
        engine.dispose()


def wait_for_events(visit: Visit, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    for _ in range(int(timeout / 0.2)):
        found = stored(visit.ariane.db_url)
        if len(found) >= count:
            return found
        visit.wait(0.2)
    return stored(visit.ariane.db_url)


def assert_each_stored_once(
    visit: Visit,
    anonymous_id: str,
    expected: Counter[tuple[str, str | None]] = EXPECTED,
    *,
    requests_seen: bool = True,
) -> None:
    """Each event expected is stored once, and, where the browser showed its requests,
    they are what the SDK sent."""
    found = wait_for_events(visit, expected.total())
    assert Counter((e["type"], e.get("event")) for e in found) == expected
    if requests_seen:
        message_ids = sorted(e["messageId"] for e in found)
        assert message_ids == sorted(set(visit.message_ids)), "what the SDK sent is stored"
    assert {e["anonymousId"] for e in found} == {anonymous_id}
    assert not visit.elsewhere, f"requests left for other hosts: {visit.elsewhere}"


def segment_anonymous_id(visit: Visit) -> str:
    return visit.cookie("ajs_anonymous_id").strip('"')


def rudderstack_anonymous_id(visit: Visit) -> str:
    """RudderStack v3 keeps its cookies as `RS_ENC_v3_` and the value's JSON in base64."""
    stored_value = visit.cookie("rl_anonymous_id")
    assert stored_value.startswith("RS_ENC_v3_")
    decoded: str = json.loads(base64.b64decode(stored_value.removeprefix("RS_ENC_v3_")))
    return decoded


def test_analytics_next_delivers_every_event_once_across_a_503(
    visit: Visit, site: Site, analytics_next: dict[str, bytes], write_key: str
) -> None:
    analytics_next_page(site, analytics_next, visit.ariane, write_key)
    visit.open("/", "window.ready")
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    outage.assert_answered_503(visit)
    assert_each_stored_once(visit, segment_anonymous_id(visit))


def test_analytics_next_batching_delivers_every_event_once_across_a_503(
    visit: Visit, site: Site, analytics_next: dict[str, bytes], write_key: str
) -> None:
    batching = segment_delivery("batching", size=3, timeout=300)
    analytics_next_page(site, analytics_next, visit.ariane, write_key, batching)
    visit.open("/", "window.ready")
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    outage.assert_answered_503(visit)
    assert_each_stored_once(visit, segment_anonymous_id(visit))


def test_analytics_next_keepalive_on_page_unload_delivers_every_event_once_across_a_503(
    visit: Visit, site: Site, analytics_next: dict[str, bytes], write_key: str
) -> None:
    """The page is left as soon as its requests are sent, with `keepalive`, so that they
    outlive it. What had not been delivered by then, a 503 included, is kept in
    localStorage and sent again on the next visit."""
    keepalive = segment_delivery("standard", keepalive=True)
    analytics_next_page(site, analytics_next, visit.ariane, write_key, keepalive)
    site.page("/thanks", "<!doctype html><title>Thanks</title><p>Thank you.</p>")
    visit.open("/", "window.ready")
    wait_for_events(visit, 1)
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    # An event called just before the page goes may not have reached its request yet:
    # analytics-next then loses it, whatever the server.
    visit.wait_for_requests(EXPECTED.total())
    visit.page.evaluate("location.href = '/thanks'")
    visit.page.wait_for_url("**/thanks")
    if outage.real:
        outage.assert_answered_503(visit)
    else:
        # Delivered by the requests of the page that was left, before any other visit.
        assert len(wait_for_events(visit, EXPECTED.total())) == EXPECTED.total()
    # The next visit sends its own page view besides.
    visit.open("/", "window.ready")
    again = EXPECTED + Counter([("page", None)])
    assert_each_stored_once(visit, segment_anonymous_id(visit), again)


def test_the_readme_snippet_loads_analytics_next_from_ariane_and_delivers_once_across_a_503(
    visit: Visit, site: Site, write_key: str
) -> None:
    """Segment's snippet as the README shows it: analytics.js, its settings and its parts
    all come from Ariane."""
    snippet = readme_snippet("html", 0, visit.ariane, write_key)
    site.page(
        "/",
        f"""<!doctype html><title>Shop</title>{snippet}
<script>analytics.ready(function () {{ window.ready = true; }}); {SEND}</script>""",
    )
    visit.open("/", "window.ready")
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    outage.assert_answered_503(visit)
    assert_each_stored_once(visit, segment_anonymous_id(visit))


def test_rudderstack_from_the_readme_snippet_delivers_every_event_once_across_a_503(
    visit: Visit, site: Site, rudderstack: dict[str, bytes], write_key: str
) -> None:
    """RudderStack's default mode, one XMLHttpRequest per event, as the README loads it."""
    site.script(RUDDERSTACK_PATH, rudderstack[RUDDERSTACK_BUNDLED])
    snippet = readme_snippet("html", 1, visit.ariane, write_key)
    sends = SEND.replace("analytics.", "rudderanalytics.")
    site.page(
        "/",
        f"""<!doctype html><title>Shop</title>{snippet}
<script>rudderanalytics.ready(function () {{ window.ready = true; }}); {sends}</script>""",
    )
    visit.open("/", "window.ready")
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    outage.assert_answered_503(visit)
    assert_each_stored_once(visit, rudderstack_anonymous_id(visit))


def test_rudderstack_batching_delivers_every_event_once_across_a_503(
    visit: Visit, site: Site, rudderstack: dict[str, bytes], write_key: str
) -> None:
    batching = json.dumps(
        {"queueOptions": {"batch": {"enabled": True, "maxItems": 3, "flushInterval": 300}}}
    )
    rudderstack_page(site, rudderstack, visit.ariane, write_key, batching)
    visit.open("/", "window.ready")
    outage = Outage(visit.ariane)
    visit.page.evaluate("send()")
    outage.assert_answered_503(visit)
    assert_each_stored_once(visit, rudderstack_anonymous_id(visit))


def test_rudderstack_beacon_delivers_every_event_once_as_the_page_is_left(
    visit: Visit, site: Site, rudderstack: dict[str, bytes], write_key: str
) -> None:
    """`navigator.sendBeacon` outlives the page, and never shows the page Ariane's answer:
    a beacon answered 503 is not sent again, by the SDK or by the browser, so this mode has
    no retry to test. Playwright does not show beacons either: the page notes where each
    went, in localStorage, before the browser sends it."""
    visit.context.add_init_script(BEACON_NOTES)
    beacon = json.dumps({"useBeacon": True, "beaconQueueOptions": {"flushQueueInterval": 60_000}})
    rudderstack_page(site, rudderstack, visit.ariane, write_key, beacon)
    site.page("/thanks", "<!doctype html><title>Thanks</title><p>Thank you.</p>")
    visit.open("/", "window.ready")
    # Queued until the page is left, then sent as one beacon.
    visit.page.evaluate("send(); location.href = '/thanks';")
    visit.page.wait_for_url("**/thanks")
    assert_each_stored_once(visit, rudderstack_anonymous_id(visit), requests_seen=False)
    beacons = json.loads(visit.page.evaluate("localStorage.getItem('beacons')"))
    assert beacons == [f"{visit.ariane.url}/beacon/v1/batch?writeKey={write_key}"]


def test_the_analytics_next_ariane_serves_is_the_pinned_release_unchanged(
    analytics_next: dict[str, bytes],
) -> None:
    vendored = Path(__file__).resolve().parents[2] / "src/ariane/web/static/analytics-next"
    names = sorted(path.name for path in vendored.glob("*.js"))
    published = sorted(
        name.removeprefix("dist/umd/")
        for name in analytics_next
        if name.startswith("dist/umd/") and name.endswith(".js") and name != ANALYTICS_NEXT_UMD
    )
    assert names == published
    for name in names:
        assert (vendored / name).read_bytes() == analytics_next[f"dist/umd/{name}"], name
    assert (vendored / "LICENSE.MD").read_bytes() == analytics_next["LICENSE.MD"]
    assert f"{ANALYTICS_NEXT.version}" in (vendored / "README.md").read_text()
    assert ANALYTICS_NEXT.integrity in (vendored / "README.md").read_text()


def test_behind_a_trusted_proxy_the_sdks_are_sent_to_the_address_the_browser_used(
    running: Server, write_key: str
) -> None:
    """uvicorn takes the scheme from `X-Forwarded-Proto` of a trusted proxy (127.0.0.1 by
    default); the host is the `Host` the proxy passes on, never `X-Forwarded-Host`."""
    answer = httpx.get(
        f"{running.url}/v1/projects/{write_key}/settings",
        headers={
            "Host": "cdp.shop.example",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "elsewhere.example",
        },
    )
    segment = answer.json()["integrations"]["Segment.io"]
    assert (segment["protocol"], segment["apiHost"]) == ("https", "cdp.shop.example/v1")
