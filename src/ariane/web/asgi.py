"""Entry point for uvicorn workers: builds the app from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from ariane.bootstrap import build
from ariane.settings import load_settings
from ariane.web.app import create_app


def app_factory() -> FastAPI:
    return create_app(build(load_settings()), owns_container=True)
