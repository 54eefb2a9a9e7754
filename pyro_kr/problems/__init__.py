"""Moved to :mod:`pyro_kr.bench.problems` (the benchmark side); this old path is an alias.

Importing ``pyro_kr.problems`` (or a submodule) warns once with a ``DeprecationWarning`` and
returns the module of ``pyro_kr.bench.problems``; the alias is removed in the next release.
"""

from pyro_kr._moved import alias

alias(__name__, "pyro_kr.bench.problems")
