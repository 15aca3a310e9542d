"""Spec files: a fan-out from YAML or JSON, every problem one line naming the file, line and field.

A key given twice in one mapping (at any depth) is an error, not "the last one wins".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from fanflow.errors import SpecError
from fanflow.spec import FanOut, validate_fanout

__all__ = ["load_spec", "parse_json", "parse_yaml", "read_spec_file"]


def load_spec(path: str | Path) -> FanOut:
    """Load a fan-out spec from a YAML (``.yaml``/``.yml``) or JSON file.

    A key given twice in one mapping (at any depth) is an error, not "the last one wins".

    Raises:
        SpecError: the file is missing, unparsable (one line: file, line, column, problem), has a
            duplicate key (naming it and both lines), or the spec is invalid (naming the field).
    """
    data, source = read_spec_file(path)
    return validate_fanout(data, source=source)


def read_spec_file(path: str | Path, *, what: str = "spec") -> tuple[Any, str]:
    """The parsed content of a YAML or JSON (``.json``) file, and its name for messages.

    Raises:
        SpecError: unreadable, not UTF-8, unparsable or with a duplicate key — one line.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read {what} file {str(file)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{file.name}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    data = parse_json(text, file.name) if file.suffix == ".json" else parse_yaml(text, file.name)
    return data, file.name


# --- parsing spec files ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dotted(path: list[str | int]) -> str:
    return ".".join(str(part) for part in path)


def _duplicate_key(source: str, path: list[str | int], line: int, first_line: int) -> SpecError:
    return SpecError(
        f"{source}: duplicate key {_dotted(path)!r} at line {line} (first at line {first_line})",
        field=_dotted(path),
    )


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing duplicate keys; every error is a one-line ``SpecError``."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_keys(loader, node, source, [], set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = _one_line(exc.problem or exc.context or "unparsable")
        raise SpecError(f"{source}: not valid YAML{where}: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = _line_of(text, exc.position)
        column = exc.position - text.rfind("\n", 0, exc.position)
        problem = exc.reason
        if isinstance(exc.character, int):
            problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise SpecError(f"{source}: not valid YAML (line {line}, column {column}): {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {_one_line(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()


_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_yaml_keys(
    loader: yaml.SafeLoader, node: yaml.Node, source: str, path: list[str | int], seen: set[int]
) -> None:
    """Raise ``SpecError`` for a mapping of ``node``'s tree that has a key twice.

    Keys are compared as YAML constructs them (``1`` and ``"1"`` differ, ``on`` and ``true`` do not).
    Keys brought in by a merge (``<<: *defaults``) may be overridden; aliases are checked once.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_yaml_keys(loader, item, source, [*path, index], seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE_TAG:
                _check_yaml_keys(loader, value_node, source, path, seen)
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a complex key: the constructor judges it
                _check_yaml_keys(loader, value_node, source, path, seen)
                continue
            key = loader.construct_object(key_node)
            name, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first:
                raise _duplicate_key(source, [*path, name], line, first[key])
            first[key] = line
            _check_yaml_keys(loader, value_node, source, [*path, name], seen)


def parse_json(text: str, source: str) -> Any:
    """``json.loads(text)``, refusing duplicate keys; every error is a one-line ``SpecError``."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) != len(pairs):
            raise _JSONDuplicateKeyError
        return data

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    except _JSONDuplicateKeyError:
        pass
    path, position, first_position = _find_json_duplicate(text)
    raise _duplicate_key(source, path, _line_of(text, position), _line_of(text, first_position))


_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _JSONDuplicateKeyError(Exception):
    """Raised inside ``json.loads`` at the first object that has a key twice."""


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _find_json_duplicate(text: str) -> tuple[list[str | int], int, int]:
    """Path and positions (second, first) of the first duplicate key in ``text``, valid JSON.

    A second, slower pass run only when a duplicate is known to exist: Python's ``json`` gives an
    ``object_pairs_hook`` no positions.
    """
    decode = json.JSONDecoder().raw_decode

    def skip(pos: int) -> int:
        match = _JSON_WHITESPACE.match(text, pos)
        return match.end() if match else pos

    def walk(pos: int, path: list[str | int]) -> int:
        """Check the value at ``pos`` (no leading whitespace); return the position after it."""
        char = text[pos]
        if char == "{":
            first: dict[str, int] = {}
            pos = skip(pos + 1)
            while text[pos] != "}":
                key, after = decode(text, pos)
                if key in first:
                    raise _JSONDuplicate([*path, key], pos, first[key])
                first[key] = pos
                pos = walk(skip(skip(after) + 1), [*path, key])  # past the ':'
                pos = skip(pos)
                if text[pos] == ",":
                    pos = skip(pos + 1)
            return pos + 1
        if char == "[":
            pos, index = skip(pos + 1), 0
            while text[pos] != "]":
                pos = skip(walk(pos, [*path, index]))
                index += 1
                if text[pos] == ",":
                    pos = skip(pos + 1)
            return pos + 1
        return decode(text, pos)[1]

    try:
        walk(skip(0), [])
    except _JSONDuplicate as found:
        return found.path, found.position, found.first_position
    raise AssertionError("no duplicate key found")  # pragma: no cover - only called with one


class _JSONDuplicate(Exception):
    def __init__(self, path: list[str | int], position: int, first_position: int) -> None:
        super().__init__(path)
        self.path = path
        self.position = position
        self.first_position = first_position
