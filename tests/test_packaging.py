"""pyproject.toml declares every third-party package that the library and the stages import, and no
runtime dependency that only the tests use."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"ruamel.yaml>=0.18"`` -> ``ruamel-yaml``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]).lower()


def _imports(folder: Path) -> dict[str, Path]:
    """Top-level module name -> one file that imports it (absolute imports only, lazy ones included)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    optional = {_name(r) for r in project["optional-dependencies"]["youtube"]}
    distributions = importlib.metadata.packages_distributions()
    imported = {**_imports(ROOT / "tubevit"), **_imports(ROOT / "pipelines")}
    third_party = {
        module: path
        for module, path in imported.items()
        if module not in sys.stdlib_module_names and module not in ("tubevit", "pipelines", "__future__")
    }
    assert {"torch", "ruamel", "safetensors", "prefect", "webdataset"} <= set(third_party)
    undeclared = []
    for module, path in sorted(third_party.items()):
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & (runtime | optional):
            undeclared.append(
                f"{module} (imported in {path.relative_to(ROOT)}; distributions {sorted(names)})"
            )
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
    # PyYAML: the library and the stages read YAML with ruamel.yaml; only the tests use PyYAML
    assert "yaml" not in third_party and "pyyaml" not in runtime
    assert "pyyaml" in {_name(r) for r in project["optional-dependencies"]["dev"]}
