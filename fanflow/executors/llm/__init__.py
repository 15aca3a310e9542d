"""The ``llm`` executor's parts: providers, prices, templates, requests and the HTTP call.

A branch's model call goes: ``build_request`` (render the templates, resolve the provider) ->
``estimate`` (reserved against limits and budgets) -> ``call_model`` (one HTTP request, no
retries) -> ``parse_output`` (text, tool calls, or schema-checked JSON). On a rejected answer the
branch runner asks again with ``with_feedback`` built on the original request.

Both wire APIs (OpenAI chat completions, Anthropic messages) are spoken with plain ``httpx``:
one connection pool per base URL per process, shared by every thread, with the rate-limit headers
of each answer handed back for the shared limiter.
"""

from fanflow.executors.llm.call import call_model
from fanflow.executors.llm.http import close_clients
from fanflow.executors.llm.output import parse_output
from fanflow.executors.llm.pricing import BUILTIN_PRICES, cost_usd
from fanflow.executors.llm.providers import (
    Price,
    Provider,
    ProviderConfig,
    configure,
    known_providers,
    provider,
)
from fanflow.executors.llm.request import LLMReply, LLMRequest, build_request, estimate, with_feedback
from fanflow.executors.llm.templates import check_call_templates, placeholders, render

__all__ = [
    "BUILTIN_PRICES",
    "LLMReply",
    "LLMRequest",
    "Price",
    "Provider",
    "ProviderConfig",
    "build_request",
    "call_model",
    "check_call_templates",
    "close_clients",
    "configure",
    "cost_usd",
    "estimate",
    "known_providers",
    "parse_output",
    "placeholders",
    "provider",
    "render",
    "with_feedback",
]
