"""A real Celery worker (in-process, threads pool) on the real test Redis, shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fanflow.client import Client
from fanflow.config import Settings
from fanflow.embedded import InProcessWorker


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[Client]:
    """A client whose app has an in-process worker consuming every fanflow queue."""
    client = Client.from_settings(settings)
    with InProcessWorker(client.app, concurrency=8):
        yield client
