"""The layer line (docs/architecture.md): every import, lazy ones inside functions included, points down.

    benchmarks  ->  recipes  ->  eval  ->  data_pipelines  ->  vla_ebt
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "vla_ebt": set(),
    "data_pipelines": {"vla_ebt"},
    "eval": {"vla_ebt", "data_pipelines"},
    "recipes": {"vla_ebt", "data_pipelines", "eval"},
    "benchmarks": {"vla_ebt", "data_pipelines", "eval", "recipes"},
}
PROJECT = set(ALLOWED)


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in PROJECT]
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad: list[str] = []
    for pkg, allowed in ALLOWED.items():
        for f in sorted((root / pkg).rglob("*.py")):
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
        (tmp_path / pkg).mkdir()
    assert violations(tmp_path) == ["vla_ebt/m.py:2: vla_ebt imports eval", "vla_ebt/m.py:3: vla_ebt imports recipes"]


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_every_layer_exists(pkg):
    assert (ROOT / pkg / "__init__.py").exists() or pkg == "benchmarks"
