"""The documentation: the site under docs/ builds with no warning (a broken link or anchor, a page
left out of the navigation), it carries the OpenAPI document the daemon serves, and README.md stays
a front page whose links lead somewhere."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speakd.api.openapi import OPENAPI

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250
# [text](target) and [text](target "title"); images too. Targets with a scheme are not files here.
MARKDOWN_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml")]
    built = subprocess.run(
        [*build, "--site-dir", str(site_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return site_dir


def test_the_site_builds_strictly_and_has_every_page(site):
    pages = {path.stem for path in (REPO / "docs").glob("*.md")}
    for page in pages - {"index"}:
        assert (site / page / "index.html").is_file(), f"docs/{page}.md was not built"


def test_the_site_serves_the_daemons_openapi_document(site):
    assert json.loads((site / "openapi.json").read_text()) == json.loads(json.dumps(OPENAPI))
    api_page = (site / "api" / "index.html").read_text()
    assert 'class="swagger-ui-iframe"' in api_page, "the API page does not render the document"


def test_getting_started_shows_the_readmes_quick_start_block(site):
    spec = importlib.util.spec_from_file_location("readme_quickstart", REPO / "docs/hooks/readme_quickstart.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    block = hook.quickstart_block((REPO / "README.md").read_text())
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "getting-started" / "index.html").read_text()))
    for line in block.splitlines()[1:-1]:  # inside the fences
        assert line in page, f"docs/getting-started.md lacks the quick start's line {line!r}"


def readme_links() -> list[str]:
    return MARKDOWN_LINK.findall((REPO / "README.md").read_text())


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"
    assert any(link.startswith("docs/") for link in readme_links()), "README.md does not link into docs/"


def test_every_relative_link_in_the_readme_leads_to_a_file():
    broken = []
    for link in readme_links():
        path = link.split("#", 1)[0]
        if EXTERNAL.match(link) or not path:
            continue
        if not (REPO / path).exists():
            broken.append(link)
    assert not broken, f"README.md links to files that do not exist: {broken}"
