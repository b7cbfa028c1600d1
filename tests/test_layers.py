"""The layers import only what docs/architecture.md allows, and the package keeps its size rules.

core (src/ies/*.py): torch and the standard library only; policies: the core; experiments:
core, policies, numpy/matplotlib/tqdm/mnist1d, never the CLI; cli: anything below it;
integrations: the core and their own framework. Checked on the source text (``ast``), so a
lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ies"
STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> Iterator[Tuple[str, int]]:
    """``(absolute module, line)`` of every import in ``path`` (relative imports resolved)."""
    pkg = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
                if node.module is None:  # from . import x: each name may be a module
                    for a in node.names:
                        yield f"{base}.{a.name}", node.lineno
                    continue
                yield mod, node.lineno
            else:
                yield node.module or "", node.lineno


def modules(where: str) -> Iterator[Path]:
    root = SRC / where if where else SRC
    yield from sorted(root.glob("*.py") if not where else root.rglob("*.py"))


def third_party(mod: str) -> str:
    return mod.split(".")[0]


def check(where: str, allowed_top: Set[str], forbidden_ies: Tuple[str, ...]) -> list:
    bad = []
    for path in modules(where):
        if path.name == "__main__.py":  # `python -m ies`: the CLI's entry point, not core code
            continue
        for mod, line in imports(path):
            top = third_party(mod)
            if top == "ies":
                if any(mod == f or mod.startswith(f + ".") for f in forbidden_ies):
                    bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {mod}")
            elif top not in STDLIB and top != "__future__" and top not in allowed_top:
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {mod}")
    return bad


def test_core_imports_torch_alone() -> None:
    assert len(list(modules(""))) > 5, "no core modules found"
    bad = check("", {"torch"}, ("ies.experiments", "ies.cli", "ies.integrations", "ies.policies"))
    # export() reaches for numpy lazily and says which extra to install: the one allowed exception
    bad = [b for b in bad if not (b.startswith("ies/tracker.py") and b.endswith("imports numpy"))]
    assert bad == []


def test_policies_import_only_the_core() -> None:
    assert check("policies", {"torch"}, ("ies.experiments", "ies.cli", "ies.integrations")) == []


def test_experiments_never_import_the_cli() -> None:
    # pycocotools and PIL: dense/; transformers: text.py's tiny-bert, imported when the model is built
    allowed = {"torch", "numpy", "matplotlib", "tqdm", "mnist1d", "pycocotools", "PIL", "transformers"}
    assert check("experiments", allowed, ("ies.cli", "ies.integrations")) == []


def test_integrations_do_not_import_the_engine_or_cli() -> None:
    allowed = {"torch", "lightning", "transformers", "accelerate", "packaging"}
    assert check("integrations", allowed, ("ies.experiments", "ies.cli")) == []


@pytest.mark.parametrize("limit_lines,limit_func", [(400, 60)])
def test_no_file_over_400_lines_and_no_function_over_60(limit_lines: int, limit_func: int) -> None:
    long_files, long_funcs = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > limit_lines:
            long_files.append((str(path.relative_to(SRC)), text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit_func:
                    long_funcs.append((f"{path.relative_to(SRC)}:{node.name}", n))
    assert long_files == [] and long_funcs == []
