"""Development helpers: a fake model server for tests, benchmarks and the offline demo."""

from __future__ import annotations

from fanflow.dev.fake_llm import FakeLLM, RecordedRequest, serve

__all__ = ["FakeLLM", "RecordedRequest", "serve"]
