"""Python callables for the example fan-outs (run with `fanflow run examples/wordcount.yaml`)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def file_stats(path: str, top: int = 3) -> dict[str, Any]:
    """Lines, words and the most common words of one text file (relative paths: next to this module)."""
    file = Path(path) if Path(path).is_absolute() else HERE / path
    text = file.read_text(encoding="utf-8")
    words = re.findall(r"[a-z']+", text.lower())
    common = [word for word, _ in Counter(w for w in words if len(w) > 3).most_common(top)]
    return {"file": file.name, "lines": len(text.splitlines()), "words": len(words), "top_words": common}


def summarize(outcomes: list[Any], context: Any = None) -> dict[str, Any]:
    """A custom merge: totals over every file that could be read."""
    stats = [outcome.output for outcome in outcomes]
    return {
        "topic": context,
        "files": len(stats),
        "lines": sum(s["lines"] for s in stats),
        "words": sum(s["words"] for s in stats),
        "largest": max(stats, key=lambda s: s["words"])["file"] if stats else None,
    }


# --- the pipeline example (examples/report_pipeline.yaml) -----------------------------------------


def texts_present(directory: str = "data") -> dict[str, bool]:
    """A guard: ``validation`` is true when ``directory`` (next to this module) holds text files."""
    folder = Path(directory) if Path(directory).is_absolute() else HERE / directory
    return {"validation": any(folder.glob("*.txt"))}


def largest(inputs: dict[str, Any]) -> dict[str, Any]:
    """The file with the most words, from the ``stats`` node's merged output (file key -> stats)."""
    stats = inputs["stats"]
    key = max(stats, key=lambda name: stats[name]["words"])
    return {"key": key, **stats[key]}


def report(inputs: dict[str, Any]) -> str:
    """A few lines on every file and the largest one: what its predecessors gave, in declared order."""
    stats, top = inputs["stats"], inputs["largest"]
    lines = [f"{name}: {s['words']} words, {s['lines']} lines, mostly {', '.join(s['top_words'])}"
             for name, s in stats.items()]  # fmt: skip
    lines.append(f"largest: {top['file']} ({top['words']} words)")
    return "\n".join(lines)
