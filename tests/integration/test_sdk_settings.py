"""The settings the browser SDKs load before they send, and analytics-next served by
Ariane: the SDKs are pointed at the Ariane they asked, and at nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.web.app import create_app
from ariane.web.sdk_settings import ANALYTICS_NEXT
from tests.integration.test_cross_origin import unavailable_error

SITE = "https://shop.example"


def test_analytics_next_settings_send_to_this_ariane_and_report_nothing_to_segment(
    client: TestClient, write_key: str
) -> None:
    answer = client.get(f"/v1/projects/{write_key}/settings", headers={"Origin": SITE})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == SITE
    settings = answer.json()
    assert settings["integrations"] == {
        "Segment.io": {"apiKey": write_key, "apiHost": "testserver/v1", "protocol": "http"}
    }
    assert settings["metrics"]["sampleRate"] == 0
    assert settings["autoInstrumentationSettings"] == {"sampleRate": 0}
    assert settings["remotePlugins"] == [] and settings["enabledMiddleware"] == {}


def test_the_api_host_is_where_the_browser_reached_ariane_under_its_root_path(
    container: Container, write_key: str
) -> None:
    app = create_app(container)
    with TestClient(app, base_url="https://cdp.example", root_path="/ariane") as behind_proxy:
        settings = behind_proxy.get(
            f"/v1/projects/{write_key}/settings",
            # Only uvicorn's trusted proxy headers count, and it reads no X-Forwarded-Host.
            headers={"X-Forwarded-Host": "elsewhere.example"},
        ).json()
    segment = settings["integrations"]["Segment.io"]
    assert (segment["protocol"], segment["apiHost"]) == ("https", "cdp.example/ariane/v1")


def test_an_unknown_or_rotated_write_key_is_named_as_the_problem(
    client: TestClient, container: Container, write_key: str
) -> None:
    container.access.rotate_key("web")
    for path, status in [
        (f"/v1/projects/{write_key}/settings", 404),
        (f"/sourceConfig/?writeKey={write_key}", 401),
        ("/v1/projects/never-issued/settings", 404),
    ]:
        answer = client.get(path, headers={"Origin": SITE})
        assert answer.status_code == status, path
        assert answer.json()["code"] == "unknown_write_key"
        assert "write key" in answer.json()["message"]
        assert answer.headers["access-control-allow-origin"] == SITE
    missing = client.get("/sourceConfig/", headers={"Origin": SITE})
    assert (missing.status_code, missing.json()["field"]) == (401, "writeKey")


def test_rudderstack_source_config_loads_no_destination_and_reports_nothing(
    client: TestClient, container: Container, write_key: str
) -> None:
    answer = client.get(
        "/sourceConfig/",
        params={"p": "npm", "v": "3.34.1", "build": "modern", "writeKey": write_key},
        headers={"Origin": SITE},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == SITE
    source = answer.json()["source"]
    [web] = container.access.list_sources()
    assert (source["id"], source["name"], source["enabled"]) == (web.id, "web", True)
    assert source["destinations"] == []
    assert source["config"]["statsCollection"] == {
        "errors": {"enabled": False},
        "metrics": {"enabled": False},
    }


def test_analytics_next_is_served_as_the_snippet_loads_it_gzipped_when_accepted(
    client: TestClient,
) -> None:
    standalone = (ANALYTICS_NEXT / "standalone.js").read_bytes()
    plain = client.get(
        "/analytics.js/v1/any-key/analytics.min.js", headers={"Accept-Encoding": "identity"}
    )
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/javascript")
    assert plain.content == standalone
    compressed = client.get(
        "/analytics.js/v1/any-key/analytics.min.js",
        headers={"Accept-Encoding": "gzip"},
    )
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.content == standalone
    assert int(compressed.headers["content-length"]) < len(standalone) / 3

    [chunk] = ANALYTICS_NEXT.glob("auto-track.bundle.*.js")
    served = client.get(f"/analytics-next/bundles/{chunk.name}")
    assert served.content == chunk.read_bytes()
    assert "immutable" in served.headers["cache-control"]
    for name in ["README.md", "LICENSE.MD", "..%2F..%2Fsdk_settings.py", "nothing.js"]:
        assert client.get(f"/analytics-next/bundles/{name}").status_code == 404, name


def test_settings_the_database_cannot_give_now_are_a_503_the_page_can_read(
    client: TestClient, container: Container, write_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = unavailable_error(container)

    def unavailable(*_: Any) -> Any:
        raise failure

    monkeypatch.setattr(container.access, "source_for_key", unavailable)
    for path in [f"/v1/projects/{write_key}/settings", f"/sourceConfig/?writeKey={write_key}"]:
        answer = client.get(path, headers={"Origin": SITE})
        assert (answer.status_code, answer.json()["code"]) == (503, "unavailable"), path
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["access-control-allow-origin"] == SITE

    def broken(*_: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(container.access, "source_for_key", broken)
    answer = client.get(f"/v1/projects/{write_key}/settings", headers={"Origin": SITE})
    assert (answer.status_code, answer.json()["code"]) == (500, "internal")
    assert answer.headers["access-control-allow-origin"] == SITE
