"""The layout rule (docs/architecture.md), checked on the source of every module.

* The library (``pyro_kr`` outside ``pyro_kr/bench``) never imports the benchmark side
  (``pyro_kr.bench`` and the old aliases ``pyro_kr.problems``, ``pyro_kr.reference``,
  ``pyro_kr.cli``), at module level or inside a function.
* No module imports another module's private (``_underscore``) names, and a private module
  (``pkg/_x.py``) is imported only from its own package (``pyro_kr/_x.py``: from anywhere in
  ``pyro_kr``).
* The old paths are aliases of the new modules, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "pyro_kr"
ALIASES = {"pyro_kr/problems/__init__.py", "pyro_kr/reference/__init__.py", "pyro_kr/cli.py",
           "pyro_kr/_moved.py"}  # fmt: skip
BENCH = ("pyro_kr.bench", "pyro_kr.problems", "pyro_kr.reference", "pyro_kr.cli")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).as_posix()
        if rel not in ALIASES:
            out.append((rel, path))
    return out


def _module_name(rel: str) -> str:
    name = rel[: -len(".py")].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports(rel: str, tree: ast.AST):
    """Yield ``(imported module, imported name or None, line)`` with relative imports resolved."""
    package = _module_name(rel) if rel.endswith("__init__.py") else _module_name(rel).rpartition(
        "."
    )[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                yield base, a.name, node.lineno


LIBRARY = [(rel, p) for rel, p in _modules() if not rel.startswith("pyro_kr/bench/")]


def test_the_split_is_what_the_docs_say():
    assert (ROOT / "bench" / "problems" / "__init__.py").exists()
    assert (ROOT / "bench" / "reference" / "__init__.py").exists()
    assert (ROOT / "bench" / "cli.py").exists()
    assert any((ROOT / "bench" / "data" / "references").glob("*.npz"))
    assert len(LIBRARY) > 40  # the walk sees the library


@pytest.mark.parametrize("rel,path", LIBRARY, ids=[r for r, _ in LIBRARY])
def test_the_library_never_imports_the_bench(rel, path):
    tree = ast.parse(path.read_text(), filename=rel)
    bad = []
    for module, name, line in _imports(rel, tree):
        full = f"{module}.{name}" if name else module
        if any(full == b or full.startswith(b + ".") for b in BENCH):
            bad.append(f"{rel}:{line} imports {full}")
    assert not bad, "the library imports the benchmark side: " + "; ".join(bad)


ALL = _modules()


@pytest.mark.parametrize("rel,path", ALL, ids=[r for r, _ in ALL])
def test_no_module_imports_private_names_of_another(rel, path):
    tree = ast.parse(path.read_text(), filename=rel)
    here = _module_name(rel)
    bad = []
    for module, name, line in _imports(rel, tree):
        if module == "__future__":
            continue
        if name is not None and name.startswith("_") and not name.startswith("__"):
            sub = f"{module}.{name}"
            if importlib.util.find_spec(sub.split(".")[0]) and _is_module(sub):
                module, name = sub, None  # ``from pkg import _private_module``
            else:
                bad.append(f"{rel}:{line} imports the private name {name} of {module}")
                continue
        full = module if name is None else f"{module}.{name}"
        parts = full.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])  # the package the private module belongs to
                if not (here == owner or here.startswith(owner + ".")):
                    bad.append(f"{rel}:{line} imports {full}, private to {owner}")
                break
    assert not bad, "; ".join(bad)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_old_paths_are_deprecated_aliases_of_the_new_modules():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import pyro_kr, pyro_kr.bench.problems.references as new\n"
        "try:\n"
        "    import pyro_kr.problems\n"
        "except DeprecationWarning as w:\n"
        "    assert 'pyro_kr.bench.problems' in str(w), w\n"
        "else:\n"
        "    raise SystemExit('no DeprecationWarning')\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import pyro_kr.problems.references as old, pyro_kr.reference as ref, pyro_kr.cli as cli\n"
        "import pyro_kr.bench.reference as new_ref, pyro_kr.bench.cli as new_cli\n"
        "assert old is new and ref is new_ref and cli is new_cli\n"
        "assert new.__spec__.name == 'pyro_kr.bench.problems.references'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
