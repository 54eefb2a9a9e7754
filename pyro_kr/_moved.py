"""Old import paths of modules that moved to the benchmark side (``pyro_kr.bench``).

``pyro_kr.problems``, ``pyro_kr.reference`` and ``pyro_kr.cli`` moved under
:mod:`pyro_kr.bench` (see ``docs/architecture.md``). Each old path is a thin module that calls
:func:`alias`: importing it warns once (``DeprecationWarning``) and returns the new module
itself, and its submodules (``pyro_kr.problems.references``...) resolve to the new ones, so
old code keeps working, with the same module objects, for one release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["alias"]


class _AliasLoader(importlib.abc.Loader):
    """Loads ``old.sub`` as the already importable ``new.sub`` (the same module object)."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name
        self.real_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.new_name)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.real_spec  # the import system set the alias spec: undo it

    def get_code(self, fullname):  # ``python -m old.sub`` runs new.sub's code
        return importlib.util.find_spec(self.new_name).loader.get_code(self.new_name)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.old + "."):
            return None
        new_name = self.new + fullname[len(self.old) :]
        if importlib.util.find_spec(new_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new_name))


def alias(old: str, new: str) -> None:
    """Make module ``old`` (the caller) an alias of ``new`` and of all its submodules."""
    warnings.warn(
        f"{old} moved to {new}: import it from there ({old} will be removed in the next "
        "release)",
        DeprecationWarning,
        stacklevel=3,
    )
    target = importlib.import_module(new)
    if hasattr(target, "__path__") and not any(
        isinstance(f, _AliasFinder) and f.old == old for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _AliasFinder(old, new))
    sys.modules[old] = target
