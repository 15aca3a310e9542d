"""A model call's output as its branch gives it: text, tool calls, or JSON checked against a schema."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from jsonschema import SchemaError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from fanflow.errors import OutputValidationError, SpecError
from fanflow.executors.llm.request import LLMReply, LLMRequest

__all__ = ["parse_output", "validator_for"]

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL | re.IGNORECASE)
_CACHE_SIZE = 256
_lock = threading.Lock()
_validators: OrderedDict[str, Validator] = OrderedDict()


def validator_for(schema: dict[str, Any]) -> Validator:
    """A (cached) validator of ``schema``: Draft 2020-12 unless its ``$schema`` names another.

    Raises:
        SpecError: the schema is not a valid JSON schema.
    """
    cache_key = json.dumps(schema, sort_keys=True, default=str)
    with _lock:
        cached = _validators.get(cache_key)
        if cached is not None:
            _validators.move_to_end(cache_key)
            return cached
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        message = f"output_schema is not a valid JSON schema: {_short(exc.message)}"
        raise SpecError(message, field="output_schema") from None
    validator = cls(schema)
    with _lock:
        _validators[cache_key] = validator
        while len(_validators) > _CACHE_SIZE:
            _validators.popitem(last=False)
    return validator


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_json(text: str | None) -> Any:
    if text is None or not text.strip():
        raise OutputValidationError("output is not JSON: the answer is empty", raw=text)
    try:
        return json.loads(text)
    except ValueError as exc:
        # Models sometimes fence JSON despite being asked not to; accept that one wrapping.
        fenced = _FENCE.match(text)
        if fenced is not None:
            try:
                return json.loads(fenced.group(1))
            except ValueError:
                pass
        raise OutputValidationError(f"output is not JSON: {_short(str(exc))}", raw=text) from None


def parse_output(request: LLMRequest, reply: LLMReply) -> Any:
    """The branch's output from a reply.

    - with an ``output_schema``: the answer parsed as JSON and validated against the schema;
    - with tool calls (and no answer text to check):
      ``{"content": text, "tool_calls": [{"id", "name", "arguments"}, ...]}``;
    - otherwise the answer text (``""`` when there is none).

    Raises:
        OutputValidationError: the answer is not JSON, or does not match the schema
            (``output does not match output_schema: $.path: message``); ``raw`` is the answer.
        SpecError: the output schema itself is invalid.
    """
    if request.output_schema is not None and (reply.text or not reply.tool_calls):
        value = _load_json(reply.text)
        error = best_match(validator_for(request.output_schema).iter_errors(value))
        if error is not None:
            raise OutputValidationError(
                f"output does not match output_schema: {error.json_path}: {_short(error.message)}",
                raw=reply.text,
            )
        return value
    if reply.tool_calls:
        return {"content": reply.text, "tool_calls": [dict(call) for call in reply.tool_calls]}
    return reply.text or ""
