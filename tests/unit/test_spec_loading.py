"""Loading spec files: a duplicate key or a syntax error is one line naming the file, line and column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fanflow.errors import SpecError
from fanflow.spec_files import load_spec

VALID_YAML = """\
name: wordcount
subtasks:
  - key: a
    run: {kind: python, function: "pkg.mod:fn", kwargs: {path: a.txt}}
  - key: b
    run: {kind: python, function: "pkg.mod:fn", kwargs: {path: b.txt}}
failure: {policy: best_effort}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert "\n" not in message, message
    return raised.value


def test_a_top_level_key_given_twice_names_the_key_and_both_lines(tmp_path: Path) -> None:
    spec = write(tmp_path, "job.yaml", VALID_YAML + "failure: {policy: all_or_nothing}\n")
    error = load_error(spec)
    assert str(error) == "job.yaml: duplicate key 'failure' at line 8 (first at line 7)"
    assert error.field == "failure"


def test_a_nested_duplicate_names_its_path(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "job.yaml",
        "name: x\n"
        "subtasks:\n"
        "  - key: a\n"
        "    run:\n"
        "      kind: python\n"
        "      function: pkg.mod:first\n"
        "      kwargs: {n: 1, m: 2, n: 3}\n"
        "      function: pkg.mod:second\n",
    )
    error = load_error(spec)
    assert str(error) == "job.yaml: duplicate key 'subtasks.0.run.kwargs.n' at line 7 (first at line 7)"


def test_the_last_one_does_not_silently_win_for_the_function(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "job.yml",
        "name: x\n"
        "subtasks:\n"
        "  - key: a\n"
        "    run:\n"
        "      kind: python\n"
        "      function: pkg.mod:first\n"
        "      function: pkg.mod:second\n",
    )
    assert str(load_error(spec)) == (
        "job.yml: duplicate key 'subtasks.0.run.function' at line 7 (first at line 6)"
    )


def test_keys_equal_once_constructed_are_duplicates(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML): `yes` is the boolean true; the dict would keep only one of them.
    spec = write(tmp_path, "job.yaml", "name: x\nsubtasks: []\nmetadata: {yes: 1, true: 2}\n")
    assert "duplicate key 'metadata.true' at line 3 (first at line 3)" in str(load_error(spec))


def test_merge_keys_and_aliases_may_repeat_keys(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "job.yaml",
        "name: x\n"
        "subtasks:\n"
        "  - key: a\n"
        "    run: &run {kind: python, function: 'pkg.mod:fn', kwargs: {n: 1}}\n"
        "  - key: b\n"
        "    run:\n"
        "      <<: *run\n"
        "      kwargs: {n: 2}\n"
        "  - key: c\n"
        "    run: *run\n",
    )
    fanout = load_spec(spec)
    assert [s.run.kwargs for s in fanout.subtasks] == [{"n": 1}, {"n": 2}, {"n": 1}]  # type: ignore[union-attr]


def test_bad_yaml_syntax_is_one_line_with_line_column_and_problem(tmp_path: Path) -> None:
    spec = write(tmp_path, "job.yaml", "name: x\nsubtasks:\n  - key: a\n   run: b\n")
    assert str(load_error(spec)) == (
        "job.yaml: not valid YAML (line 4, column 4): expected <block end>, but found '<block mapping start>'"
    )
    unclosed = write(tmp_path, "quote.yaml", "name: 'x\nsubtasks: []\n")
    assert str(load_error(unclosed)).startswith("quote.yaml: not valid YAML (line 3, column 1): ")


def test_a_forbidden_character_or_tag_is_one_line(tmp_path: Path) -> None:
    control = write(tmp_path, "ctrl.yaml", "name: x\nsubtasks: [\x01]\n")
    assert str(load_error(control)) == (
        "ctrl.yaml: not valid YAML (line 2, column 12): unacceptable character #x0001: "
        "special characters are not allowed"
    )
    tagged = write(tmp_path, "tag.yaml", "name: !!python/object/apply:os.system ['true']\n")
    assert "tag.yaml: not valid YAML (line 1, column 7): could not determine a constructor" in str(
        load_error(tagged)
    )
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    assert str(load_error(binary)) == "bin.yaml: not UTF-8 text (byte 6: invalid start byte)"


def test_json_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "job.json",
        '{"name": "x",\n'
        ' "subtasks": [\n'
        '   {"key": "a", "run": {"kind": "python", "function": "pkg.mod:fn"}},\n'
        '   {"key": "b", "run": {"kind": "python",\n'
        '                        "function": "pkg.mod:fn",\n'
        '                        "function": "pkg.mod:other"}}\n'
        " ]}\n",
    )
    error = load_error(spec)
    assert str(error) == "job.json: duplicate key 'subtasks.1.run.function' at line 6 (first at line 5)"
    assert error.field == "subtasks.1.run.function"


def test_json_duplicates_compare_decoded_keys(tmp_path: Path) -> None:
    spec = write(tmp_path, "job.json", '{"name": "x", "subtasks": [],\n "n\\u0061me": "y"}')
    assert str(load_error(spec)) == "job.json: duplicate key 'name' at line 2 (first at line 1)"


def test_bad_json_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    spec = write(tmp_path, "job.json", '{"name": "x",\n "subtasks": [}\n')
    assert str(load_error(spec)) == "job.json: not valid JSON (line 2, column 15): Expecting value"


def test_valid_files_load_as_before(tmp_path: Path) -> None:
    from_yaml = load_spec(write(tmp_path, "job.yaml", VALID_YAML))
    data = yaml.safe_load(VALID_YAML)
    from_json = load_spec(write(tmp_path, "job.json", json.dumps(data, indent=2)))
    assert from_yaml == from_json
    assert [s.key for s in from_yaml.subtasks] == ["a", "b"]
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    assert str(load_error(empty)) == "empty.yaml: a spec must be a mapping, not NoneType"
