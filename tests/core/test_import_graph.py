"""The package graph, read from the source (ast), so an import added anywhere is caught before it ships.

- mm_core imports no family package and not mm_convert (mm_convert depends on mm_core, never back);
- mm_convert imports no family;
- every third-party import of a package (lazy ones inside functions too) is declared in that
  package's pyproject.toml, so ``pip install <package>`` gives a working package.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = sorted(p.parent for p in (REPO / "packages").glob("*/pyproject.toml")) + [
    REPO / "examples" / "plugin-template"]
FAMILIES = {"mm_qwen", "mm_glm", "mm_internvl", "mm_visualglm"}
# import names whose distribution is not installed here (optional extras): no metadata to ask
KNOWN_DISTRIBUTIONS = {"torch_npu": "torch-npu", "decord": "decord"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(pkg_dir: Path) -> dict:
    return tomllib.loads((pkg_dir / "pyproject.toml").read_text())


def _import_name(pkg_dir: Path) -> str:
    (src,) = [p for p in (pkg_dir / "src").iterdir() if (p / "__init__.py").is_file()]
    return src.name


@cache
def _first_party() -> dict[str, str]:
    """Import name -> distribution name of this repo's own packages (editable installs have no
    top-level metadata to ask)."""
    return {_import_name(d): _norm(_pyproject(d)["project"]["name"]) for d in PACKAGE_DIRS}


def imports_of(pkg_dir: Path) -> dict[str, set[str]]:
    """Top-level module name -> the source files (relative to the package) importing it; absolute imports only."""
    found: dict[str, set[str]] = {}
    for file in sorted((pkg_dir / "src").rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(file.relative_to(pkg_dir)))
    return found


def distribution_of(module: str) -> str:
    first = _first_party()
    if module in first:
        return first[module]
    if module in KNOWN_DISTRIBUTIONS:
        return KNOWN_DISTRIBUTIONS[module]
    dists = packages_distributions().get(module)
    if not dists:
        raise AssertionError(f"no installed distribution provides the module '{module}': add it to "
                             f"KNOWN_DISTRIBUTIONS in {Path(__file__).name} with its distribution name")
    return _norm(dists[0])


def declared(pkg_dir: Path) -> set[str]:
    project = _pyproject(pkg_dir)["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_norm(re.split(r"[\s<>=!~;\[(]", s, maxsplit=1)[0]) for s in specs}


def _offenders(pkg: str, banned: set[str]) -> dict[str, set[str]]:
    (pkg_dir,) = [d for d in PACKAGE_DIRS if _import_name(d) == pkg]
    return {m: files for m, files in imports_of(pkg_dir).items() if m in banned}


def test_core_imports_no_family_and_not_mm_convert():
    bad = _offenders("mm_core", FAMILIES | {"mm_convert"})
    assert not bad, f"mm_core must not import {sorted(bad)} (run them as commands or ask the plugin registry): {bad}"


def test_mm_convert_imports_no_family():
    bad = _offenders("mm_convert", FAMILIES)
    assert not bad, f"mm_convert must not import a family (families register converters): {bad}"


@pytest.mark.parametrize("pkg_dir", PACKAGE_DIRS, ids=lambda d: d.name)
def test_every_third_party_import_is_declared(pkg_dir):
    own = _import_name(pkg_dir)
    have = declared(pkg_dir)
    missing = {}
    for module, files in imports_of(pkg_dir).items():
        if module == own or module in sys.stdlib_module_names or module == "__future__":
            continue
        dist = distribution_of(module)
        if dist not in have:
            missing[f"{module} (distribution {dist})"] = sorted(files)
    assert not missing, f"{pkg_dir.relative_to(REPO)}/pyproject.toml does not declare: {missing}"


def test_the_scan_sees_lazy_imports(tmp_path):
    """An import inside a function counts (families are imported lazily, so that is where they hide)."""
    src = tmp_path / "src" / "pkg_x"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("def f():\n    import mm_qwen.tiny\n    from yaml import safe_load\n")
    assert set(imports_of(tmp_path)) == {"mm_qwen", "yaml"}
    assert distribution_of("yaml") == "pyyaml" and distribution_of("PIL") == "pillow"
