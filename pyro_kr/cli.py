"""Moved to :mod:`pyro_kr.bench.cli` (the benchmark side); this old path is an alias.

Importing ``pyro_kr.cli`` warns once with a ``DeprecationWarning`` and returns the module of
``pyro_kr.bench.cli``; ``python -m pyro_kr.cli`` still runs the command. The alias is removed
in the next release.
"""

if __name__ == "__main__":
    from pyro_kr.bench.cli import main

    raise SystemExit(main())

from pyro_kr._moved import alias  # noqa: E402

alias(__name__, "pyro_kr.bench.cli")
