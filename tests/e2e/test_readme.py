"""The README is run, not just read: its commands, its Python and its TOML are tested."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from ariane.settings import IdentitySettings, Settings, load_settings
from tests.e2e.conftest import Server, ariane, ariane_env, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# Variables the README uses that are not settings.
# Defaults worked out on the machine, as the README words them.
DEFAULT_FACTORIES = {"workers": "one per CPU"}
NOT_SETTINGS = {"ARIANE_CONFIG", "ARIANE_LOG_LEVEL", "ARIANE_URL", "ARIANE_TEST_POSTGRES_URL"}


def blocks(language: str | None = None) -> list[tuple[str, str]]:
    found = [(m[1], m[2]) for m in FENCE.finditer(README.read_text())]
    return [b for b in found if language is None or b[0] == language]


def commands(code: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in code.splitlines())
    return [line for line in lines if line]


def test_readme_opens_with_make_run_then_make_test() -> None:
    text = README.read_text()
    first_two = blocks()[:2]
    assert [language for language, _ in first_two] == ["sh", "sh"]
    assert [commands(code) for _, code in first_two] == [["make run"], ["make test"]]
    assert text.index("make test") < text.index("## ")


@pytest.mark.slow
def test_make_run_installs_migrates_and_serves_with_overrides(tmp_path: Path) -> None:
    # A fresh virtualenv path: make must install into it first (shown, not done, by -n).
    dry = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'new-venv'}"],
        cwd=ROOT,
        env=ariane_env("unused"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-m venv" in dry.stdout and "pip install" in dry.stdout

    # An installed one (the running interpreter's), on a fresh database and a free port.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("python", "ariane"):
        (venv / "bin" / tool).symlink_to(Path(sys.executable).with_name(tool))
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (time.time() + 3600,) * 2)
    database = f"sqlite:///{tmp_path / 'fresh.db'}"
    port = free_port()
    env = {k: v for k, v in ariane_env(database).items() if not k.startswith("ARIANE_")}
    env.update(ARIANE_PORT=str(port), ARIANE_DATABASE_URL=database)
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "run", f"VENV={venv}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert make.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            assert health.json() == {"status": "ok", "database": "sqlite"}
            break
        # The schema is there: `make run` migrated the empty database it was given.
        assert ariane(database, "sources", "list").returncode == 0
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=10)
    assert (tmp_path / "fresh.db").exists()


def script_from_readme() -> str:
    """The README's shell and Python blocks in order, as one bash script."""
    parts = ["set -euo pipefail"]
    for language, code in blocks():
        if language == "sh" and commands(code) not in (["make run"], ["make test"]):
            parts.append(code)
        elif language == "python":
            parts.append(f"python - <<'PYTHON'\n{code}PYTHON\n")
    return "\n".join(parts)


@pytest.mark.slow
def test_readme_walkthrough_runs(server: Server, admin: httpx.Client, tmp_path: Path) -> None:
    # The README is followed from a checkout: `.venv` there is the environment under test.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(sys.prefix)
    script = workdir / "readme.sh"
    script.write_text(script_from_readme())
    done = subprocess.run(
        ["bash", str(script)],
        cwd=workdir,
        env=ariane_env(server.db_url, ARIANE_PORT=str(server.port)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '{"success":true}' in done.stdout
    assert "\twebsite\t" in done.stdout
    assert "1 row: accepted 1, duplicates 0, quarantined 0" in done.stdout

    profile = admin.get(
        "/api/profiles/lookup", params={"type": "email", "value": "ada@example.com"}
    ).json()
    assert profile["traits"]["name"] == "Ada"
    assert profile["computed"]["event_counts"] == {"Order Completed": 2}
    assert done.stdout.count(profile["id"]) >= 2, "curl and `profile show` both printed it"
    events = admin.get(f"/api/profiles/{profile['id']}/events").json()["events"]
    imported = next(e for e in events if e["messageId"] == "order-1001")
    assert imported["properties"] == {"revenue": 19.9, "currency": "EUR"}
    from_sdk = next(e for e in events if e.get("context", {}).get("library"))
    assert from_sdk["context"]["library"]["name"] == "analytics-python"


def test_toml_example_is_a_valid_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(_, example)] = blocks("toml")
    document = tomllib.loads(example)
    assert set(document) <= set(Settings.model_fields)
    assert set(document["identity"]) <= set(IdentitySettings.model_fields)
    path = tmp_path / "ariane.toml"
    path.write_text(example)
    for name in list(os.environ):
        if name.startswith("ARIANE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ARIANE_CONFIG", str(path))

    settings = load_settings()
    assert settings.database_url == document["database_url"]
    assert settings.workers == document["workers"]
    assert settings.identity.model_dump(include=set(document["identity"])) == document["identity"]

    monkeypatch.setenv("ARIANE_WORKERS", "2")
    monkeypatch.setenv("ARIANE_IDENTITY__DEFAULT_PHONE_REGION", "BE")
    overridden = load_settings()
    assert (overridden.workers, overridden.identity.default_phone_region) == (2, "BE")


def test_every_setting_is_documented_with_its_default() -> None:
    text = README.read_text()
    for name in IdentitySettings.model_fields:
        assert f"`{name}`" in text, f"identity setting {name} is not in the README"
    rows = dict(re.findall(r"^\| `(ARIANE_[A-Z_]+)\*?` \| `?([^|`]*)`? \|", text, re.MULTILINE))
    for name, field in Settings.model_fields.items():
        variable = f"ARIANE_{name.upper()}"
        if name == "identity":
            assert "ARIANE_IDENTITY__" in text
            continue
        assert variable in rows, f"{variable} is not in the README's table"
        default = DEFAULT_FACTORIES.get(name, str(field.default))
        assert rows[variable] == default, f"{variable}: README says {rows[variable]}"
    documented = set(re.findall(r"ARIANE_[A-Z_]*[A-Z]", text))
    settings = {f"ARIANE_{name.upper()}" for name in Settings.model_fields}
    unknown = {
        v for v in documented - settings - NOT_SETTINGS if not v.startswith("ARIANE_IDENTITY__")
    }
    assert unknown == set(), "the README names variables Ariane does not read"


def test_relative_links_lead_somewhere() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_ariane_serve_runs_one_worker_per_cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARIANE_WORKERS", raising=False)
    monkeypatch.delenv("ARIANE_CONFIG", raising=False)
    assert load_settings().workers == len(os.sched_getaffinity(0))
