"""Count the words of a text."""

import re
from collections import Counter


def top_words(text: str, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` most frequent words of ``text`` (case-insensitive), most frequent first."""
    return Counter(re.findall(r"[a-z']+", text.lower())).most_common(n)
