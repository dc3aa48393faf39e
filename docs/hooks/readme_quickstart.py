"""MkDocs hook: docs/getting-started.md shows the README's quick-start block, not a copy of it.

The block is the fenced ``sh`` block after README.md's ``<!-- quickstart:`` marker, the one
tests/integration/test_quickstart.py runs; the page marks where it goes with PLACEHOLDER.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "getting-started.md"
PLACEHOLDER = "<!-- the README's quick-start block -->"
MARKER = "<!-- quickstart:"


def quickstart_block(readme: str) -> str:
    """The quick-start block of ``readme``, fences included."""
    if MARKER not in readme:
        raise PluginError(f"README.md has no {MARKER!r} marker before its quick-start block")
    match = re.search(r"^```sh\n.*?^```$", readme[readme.index(MARKER) :], re.S | re.M)
    if match is None:
        raise PluginError("README.md has no ```sh block after its quick-start marker")
    return match.group(0)


def on_page_markdown(markdown: str, page, config, **_) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if PLACEHOLDER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its placeholder {PLACEHOLDER!r}")
    readme = Path(config.config_file_path).parent / "README.md"
    return markdown.replace(PLACEHOLDER, quickstart_block(readme.read_text()))
