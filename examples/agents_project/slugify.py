"""Turn a title into a URL slug."""

import re


def slugify(title: str) -> str:
    """Lower-case words of ``title`` joined by hyphens: ``"Hello, World!"`` -> ``"hello-world"``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
