"""Likelihood-free joint-sample tasks of Kerrigan et al. 2024 (Table 1): checkerboard, moons,
circles,
swissroll.

The generators live in :mod:`pyro_kr.bench.problems.joint2d` (``DATASETS[name](n, seed=...)``
returns
``(u, y)``, each ``(n, 1)``). These problems wrap them in the registry API for simulation-based
methods: ``simulate`` draws training pairs, and "observation ``i``" is test set ``i`` of the
paper's protocol (five test sets of 5,000 joint draws): ``observation(i)`` is its ``y`` column,
shape ``(5000, 1)``, and ``reference(i)`` its joint draws ``{"u": (5000, 1), "y": (5000, 1)}``.
There is no likelihood: ``model`` and ``pymc_model`` raise ``NotImplementedError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem

__all__ = ["Checkerboard", "Circles", "Joint2DTask", "Moons", "SwissRoll"]

NUM_TEST_SETS = 5
TEST_SIZE = 5000
_TEST_SEED = 10_000  # test set i uses seed _TEST_SEED + i; keep training seeds below it


@dataclass(frozen=True)
class Joint2DTask(Problem):
    """A 2-d joint distribution of ``(u, y)`` known only through its generator.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("moons")
        >>> u, y = p.simulate(100, seed=0)
        >>> tuple(u["u"].shape), tuple(y.shape)
        ((100, 1), (100, 1))
    """

    has_likelihood: ClassVar[bool] = False
    test_size: int = TEST_SIZE

    def _generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from pyro_kr.bench.problems.joint2d import DATASETS

        u, y = DATASETS[self.name](n, seed=seed)
        return u.to(torch.float64), y.to(torch.float64)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"u": (1,)}

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (1,)

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        raise NotImplementedError(f"{self.name} is a joint-sample task with no likelihood")

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(
            f"{self.name} is a joint-sample task with no likelihood (no Pyro model density); "
            "use simulate() for training pairs"
        )

    def pymc_model(self, y: Any) -> Any:
        raise NotImplementedError(f"{self.name} is likelihood-free: it has no PyMC twin")

    def simulate(self, n: int, *, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from pyro_kr._validation import check_dim

        check_dim("n", n)
        if seed >= _TEST_SEED:
            raise ValueError(f"training seeds must be < {_TEST_SEED} (test sets), got {seed}")
        u, y = self._generate(n, seed)
        return {"u": u}, y

    def observation_values(self) -> list[torch.Tensor]:
        return [self._generate(self.test_size, _TEST_SEED + i)[1] for i in range(NUM_TEST_SETS)]

    @property
    def num_observations(self) -> int:
        return NUM_TEST_SETS

    def observation(self, index: int = 0) -> torch.Tensor:
        """The ``y`` column of test set ``index``, shape ``(test_size, 1)``."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"observation index must be an int, got {type(index).__name__}")
        if not 0 <= index < NUM_TEST_SETS:
            raise ValueError(
                f"{self.name} has observations 0..{NUM_TEST_SETS - 1}, got index {index}"
            )
        return self._generate(self.test_size, _TEST_SEED + index)[1]

    def reference(
        self, index: int = 0, *, num_samples: int | None = None
    ) -> dict[str, np.ndarray]:
        """Joint draws of test set ``index``: ``{"u": (n, 1), "y": (n, 1)}`` (generator)."""
        self.observation(index)
        n = self.test_size if num_samples is None else num_samples
        u, y = self._generate(n, _TEST_SEED + index)
        return {"u": u.numpy(), "y": y.numpy()}


@dataclass(frozen=True)
class Checkerboard(Joint2DTask):
    name: ClassVar[str] = "checkerboard"


@dataclass(frozen=True)
class Moons(Joint2DTask):
    name: ClassVar[str] = "moons"


@dataclass(frozen=True)
class Circles(Joint2DTask):
    name: ClassVar[str] = "circles"


@dataclass(frozen=True)
class SwissRoll(Joint2DTask):
    name: ClassVar[str] = "swissroll"
