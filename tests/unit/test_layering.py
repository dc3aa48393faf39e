"""The arrows between speakd's folders point one way: down this table.

Every module under ``speakd/`` is read with ``ast`` (no import runs), each import of a speakd
module (at the top, inside a function, under ``TYPE_CHECKING``) is looked up in the table, and
an import of a higher layer fails, naming the file, line and both layers. Imports inside one
folder are free; folders of one layer import one another only where the layer says so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "speakd"

# High -> low. A "folder" is a package under speakd/ or a module directly in it
# (``__init__`` is speakd/__init__.py). The flag: whether its folders may import one another.
LAYERS: tuple[tuple[str, frozenset[str], bool], ...] = (
    ("wiring", frozenset({"__main__", "daemon", "reload", "config_check", "sandbox"}), True),
    ("ways in", frozenset({"api", "agi", "ari_commands"}), False),
    ("metrics", frozenset({"metrics"}), True),
    ("sessions", frozenset({"sessions"}), True),
    ("events", frozenset({"events"}), True),
    ("adapters", frozenset({"media", "providers", "ari", "store"}), False),
    (
        "foundation",
        frozenset(
            {
                "__init__",
                "audio",
                "config",
                "errors",
                "languages",
                "logging",
                "parsing",
                "provider_names",
                "systemd_notify",
                "tasks",
                "urls",
            }
        ),
        True,
    ),
)
RANK = {folder: len(LAYERS) - index for index, (_, folders, _) in enumerate(LAYERS) for folder in folders}
LAYER = {folder: name for name, folders, _ in LAYERS for folder in folders}
PEERS_MAY_IMPORT = {name: free for name, _, free in LAYERS}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, speakd module imported) for every import in the file, wherever it is written."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from speakd import daemon`` imports the module speakd.daemon, not the package.
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target if _is_module(target) else base))
    return [(line, name) for line, name in found if name == "speakd" or name.startswith("speakd.")]


def _violations(path: Path, root: Path = REPO) -> list[str]:
    """What ``path`` (a file of the speakd tree under ``root``) imports against the layering."""
    source = _folder(_module_name(path, root))
    found = []
    for line, target in _imports(path, root):
        folder = _folder(target)
        if folder == source or folder not in RANK:  # an unknown folder fails the test below
            continue
        upward = RANK[folder] > RANK[source]
        sideways = RANK[folder] == RANK[source] and not PEERS_MAY_IMPORT[LAYER[source]]
        if upward or sideways:
            found.append(
                f"{path.relative_to(root)}:{line}: {LAYER[source]} ({source}) imports {target} "
                f"({LAYER[folder]}{': a peer' if sideways else ', a higher layer'})"
            )
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_has_a_layer():
    unknown = sorted({_folder(_module_name(path, REPO)) for path in _modules()} - set(RANK))
    assert not unknown, f"put these in LAYERS (tests/unit/test_layering.py): {unknown}"


def test_no_import_points_up_or_across():
    violations = [v for path in _modules() for v in _violations(path)]
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("source", "line", "expected"),
    [
        ("speakd/store/x.py", "from speakd.sessions.service import X", "adapters (store) imports speakd.sessions"),
        ("speakd/media/x.py", "def f():\n    from speakd.providers import base", "adapters (media) imports"),
        ("speakd/events/x.py", "if TYPE_CHECKING:\n    import speakd.metrics", "events (events) imports"),
        (
            "speakd/sessions/x.py",
            "from speakd.agi import scripts",
            "sessions (sessions) imports speakd.agi.scripts (ways in",
        ),
        ("speakd/errors.py", "from . import daemon", "foundation (errors) imports speakd.daemon"),
    ],
)
def test_an_import_against_the_layering_is_named(tmp_path, source, line, expected):
    # The check itself, on a file written for it: it must see imports however they are written
    # (modules are looked up in the real tree: ``from speakd.agi import scripts`` is the module).
    path = tmp_path / source
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"from typing import TYPE_CHECKING\n{line}\n")
    (found,) = _violations(path, tmp_path)
    assert expected in found and found.startswith(f"{source}:")


def test_imports_down_and_within_a_folder_pass(tmp_path):
    path = tmp_path / "speakd/sessions/x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from speakd.store.records import Speaking\nfrom speakd.sessions import service\nimport speakd\n")
    assert _violations(path, tmp_path) == []
