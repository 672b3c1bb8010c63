"""The layer line (docs/architecture.md): every import, lazy ones inside functions included, points down.

    benchmarks  ->  recipes  ->  eval  ->  data_pipelines  ->  vla_ebt  ->  vla_ebt_client

``vla_ebt_client`` (packages/vla_ebt_client) is the torch-free robot side: besides importing no
project package, it imports nothing outside the standard library, numpy, msgpack and websockets.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "vla_ebt_client": set(),
    "vla_ebt": {"vla_ebt_client"},
    "data_pipelines": {"vla_ebt", "vla_ebt_client"},
    "eval": {"vla_ebt", "data_pipelines", "vla_ebt_client"},
    "recipes": {"vla_ebt", "data_pipelines", "eval", "vla_ebt_client"},
    "benchmarks": {"vla_ebt", "data_pipelines", "eval", "recipes", "vla_ebt_client"},
}
PROJECT = set(ALLOWED)
#: package -> its folder (relative to the repository root) where that is not the package's name
FOLDERS: dict[str, str] = {"vla_ebt_client": "packages/vla_ebt_client/vla_ebt_client"}
#: the only third-party distributions the client package may import
CLIENT_THIRD_PARTY = {"numpy", "msgpack", "websockets"}


def folder(pkg: str, root: Path = ROOT) -> Path:
    return root / FOLDERS.get(pkg, pkg)


def imported_packages(path: Path, project: set[str] | None = PROJECT) -> list[tuple[int, str]]:
    """(line, top-level package) for every absolute import in ``path``: project packages only, or
    every package with ``project=None``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(node.lineno, n.split(".")[0]) for n in names if project is None or n.split(".")[0] in project]
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad: list[str] = []
    for pkg, allowed in ALLOWED.items():
        for f in sorted(folder(pkg, root).rglob("*.py")):
            for line, target in imported_packages(f):
                if target != pkg and target not in allowed:
                    bad.append(f"{f.relative_to(root)}:{line}: {pkg} imports {target}")
    return bad


def test_no_import_points_up_the_layer_line():
    assert violations() == []


def test_checker_sees_lazy_imports(tmp_path):
    (tmp_path / "vla_ebt").mkdir()
    (tmp_path / "vla_ebt" / "m.py").write_text("def f():\n    from eval.sim import rollout\n    import recipes.configs\n")
    for pkg in set(ALLOWED) - {"vla_ebt"}:
        folder(pkg, tmp_path).mkdir(parents=True)
    assert violations(tmp_path) == ["vla_ebt/m.py:2: vla_ebt imports eval", "vla_ebt/m.py:3: vla_ebt imports recipes"]


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_every_layer_exists(pkg):
    assert (folder(pkg) / "__init__.py").exists() or pkg == "benchmarks"


def client_violations(root: Path = ROOT) -> list[str]:
    """Imports of packages/vla_ebt_client/vla_ebt_client/*.py outside the stdlib, numpy, msgpack,
    websockets and itself (torch and every project package included)."""
    return [f"{f.relative_to(root)}:{line}: vla_ebt_client imports {mod}"
            for f in sorted(folder("vla_ebt_client", root).glob("*.py"))
            for line, mod in imported_packages(f, None)
            if mod not in sys.stdlib_module_names and mod not in CLIENT_THIRD_PARTY | {"vla_ebt_client"}]


def test_client_package_imports_only_stdlib_numpy_msgpack_websockets(tmp_path):
    assert list(folder("vla_ebt_client").glob("*.py")) and client_violations() == []
    d = folder("vla_ebt_client", tmp_path)
    d.mkdir(parents=True)
    (d / "m.py").write_text("import json, numpy\ndef f():\n    import torch\n    from vla_ebt.policy import VLAPolicy\n")
    assert client_violations(tmp_path) == [f"{FOLDERS['vla_ebt_client']}/m.py:3: vla_ebt_client imports torch",
                                           f"{FOLDERS['vla_ebt_client']}/m.py:4: vla_ebt_client imports vla_ebt"]
