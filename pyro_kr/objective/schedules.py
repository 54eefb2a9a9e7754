"""Annealing schedules for ``(eps, lambda) -> (0, inf)`` (Baptista et al. 2025, Thm 3.8).

Each schedule is a pure function of the step: ``schedule(step) -> float``; it ramps from
``start`` to ``end`` over ``steps`` steps and then holds ``end``. :class:`Annealing` pairs one
schedule for ``eps`` with one for ``lam`` (and one for the likelihood temperature ``beta``: on
by default in :meth:`Annealing.over`, the library's default recipe; opt-in in the
constructor) and keeps the step counter (with ``state_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Annealing",
    "ConstantSchedule",
    "CosineSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "Schedule",
    "DEFAULT_BETA",
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "RAMP_FRACTION",
]

# Defaults checked by the sweep in benchmarks/schedules.py (results in
# benchmarks/results/schedules.json, discussed in docs/objective.md): at 1000 steps x 3 seeds
# on a 4-d Gaussian (affine AutoKR) and the banana (monotone AutoKR), no schedule of the grid
# (eps end 1e-2..1e-4, lam start 0.1..10, lam end 1e2..1e5, ramp 0.3..1.0, linear, cosine,
# plain ELBO) beat these by more than the seed-to-seed spread, so they were kept.
DEFAULT_EPS = (1.0, 1e-3)
DEFAULT_LAM = (1.0, 1e4)
#: The one default ramp length: anneal over this fraction of the training steps, then hold the
#: end values (:meth:`Annealing.over`; used by the bench's AutoKR methods and by
#: ``fit_amortized(schedule="default")``). The sweep above found ramps of 30-100 % of the
#: budget equal within the seed-to-seed spread.
RAMP_FRACTION = 0.7
#: The default likelihood-temperature ramp of :meth:`Annealing.over` (the library's default
#: recipe): ``beta`` from 1e-2 up to 1 (the posterior) on the ``(eps, lam)`` ramp. Chosen by the
#: suite table (``benchmarks/suite.py``, docs/hard_posteriors.md): with ``fit``'s lr decay after
#: the ramp it is at least as good as the untempered recipe on all 8 problems (W2 1.20 vs 1.64
#: on ``linear_gaussian``, 5.7 vs 10.8 on ``darcy_2d``, mass on every mode of
#: ``symmetric_modes``). Pass ``beta=1.0`` for the untempered objective.
DEFAULT_BETA = (1e-2, 1.0)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    return steps


@dataclass(frozen=True)
class Schedule:
    """Base class: ramp from ``start`` to ``end`` over ``steps``, then hold ``end``."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"schedule {name} must be a number, got {value!r}")

    def fraction(self, step: int) -> float:
        """Progress in ``[0, 1]`` at ``step``."""
        if self.steps == 0:
            return 1.0
        return min(max(step, 0), self.steps) / self.steps

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class GeometricSchedule(Schedule):
    """``start * (end / start) ** (step / steps)``: constant ratio per step (the default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.start < math.inf and 0 < self.end < math.inf):
            raise ValueError(
                "a geometric schedule needs finite positive start and end, got "
                f"start={self.start}, end={self.end}; use ConstantSchedule.of(value) for a "
                "constant (e.g. ConstantSchedule.of(math.inf) for lam = inf)"
            )

    def __call__(self, step: int) -> float:
        t = self.fraction(step)
        return float(self.start * (self.end / self.start) ** t)


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """``start + (end - start) * step / steps``."""

    def __call__(self, step: int) -> float:
        return float(self.start + (self.end - self.start) * self.fraction(step))


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Half-cosine ramp: slow at both ends, ``end + (start - end) (1 + cos(pi t)) / 2``."""

    def __call__(self, step: int) -> float:
        t = self.fraction(step)
        return float(self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """Always ``value`` (``start == end``); ``ConstantSchedule.of(v)`` builds one."""

    @classmethod
    def of(cls, value: float) -> ConstantSchedule:
        return cls(float(value), float(value), 0)

    def __call__(self, step: int) -> float:
        return float(self.start)


_KINDS: dict[str, type[Schedule]] = {
    "geometric": GeometricSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
}


def _as_schedule(value, steps: int, kind: str, name: str) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float):
        return ConstantSchedule.of(value)
    if isinstance(value, tuple | list) and len(value) == 2:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
        start, end = _check_pair(name, value)
        if steps == 0 and start != end:
            raise ValueError(
                f"Annealing(steps=0) leaves no room for the ramp {name}=({start}, {end}): it "
                f"would start at its end value {end}. Pass steps >= 1 (usually the number of "
                f"training steps), or a constant {name}={end}"
            )
        return _KINDS[kind](start, end, steps)
    raise ValueError(
        f"{name} must be a number, a (start, end) pair or a Schedule, got {value!r}"
    )


def _check_pair(name: str, value) -> tuple[float, float]:
    """Check an ``eps`` or ``lam`` ``(start, end)`` pair; the message names the argument."""
    try:
        start, end = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (start, end) pair of numbers, got {value!r}") from None
    if name == "eps":
        if not (0 < start <= 1 and 0 < end <= 1):
            raise ValueError(
                f"eps must lie in (0, 1], got eps=({start}, {end}); eps weights the transport "
                "cost's coordinates and anneals from 1 towards 0, e.g. eps=(1.0, 1e-3)"
            )
    elif name == "beta":
        if not (0 < start <= 1 and 0 < end <= 1):
            raise ValueError(
                f"beta must lie in (0, 1], got beta=({start}, {end}); beta multiplies the "
                "log likelihood and ramps up to 1 (the posterior), e.g. beta=(1e-2, 1.0)"
            )
        if end != 1:
            raise ValueError(
                f"a beta ramp must end at 1 (the untempered posterior), got beta=({start}, "
                f"{end}); use beta=({start}, 1.0)"
            )
    elif name == "lam":
        if not (start > 0 and end > 0):
            raise ValueError(
                f"lam must be > 0, got lam=({start}, {end}); lam weights the KL term and "
                "anneals upwards, e.g. lam=(1.0, 1e4)"
            )
        if math.isinf(end) or math.isinf(start):
            raise ValueError(
                f"a lam ramp needs finite ends, got lam=({start}, {end}); use a large finite "
                "end (e.g. 1e4), or lam=math.inf for the plain ELBO"
            )
    return start, end


class Annealing:
    """Coupled schedule for the transport weight ``eps`` and the KL weight ``lam``.

    The objective of Baptista et al. 2025 (eq. 4) is ``lam * KL(T#mu || nu) + E[c_eps(x, T(x))]``;
    annealing ``eps`` from 1 towards 0 and ``lam`` upwards moves the minimiser from the
    Brenier map towards the KR map of the target (Thm 3.6-3.8). Warm-started continuation
    along a schedule matters (docs/objective.md): solving the final ``(eps, lam)`` from scratch
    does not give a triangular map.

    Args:
        eps: ``(start, end)`` with ``1 >= start >= end > 0``, a constant, or a :class:`Schedule`.
        lam: ``(start, end)`` with ``0 < start <= end``, a constant (``math.inf`` gives the plain
            ELBO), or a :class:`Schedule`.
        steps: length of the ramp; both values hold their ``end`` afterwards. The default
            (1000) is for use without a known budget; :meth:`over` sets the ramp from the
            number of training steps (the library's default rule, :data:`RAMP_FRACTION`).
        kind: ``"geometric"`` (default), ``"linear"`` or ``"cosine"`` for pairs.
        beta: likelihood tempering: ``(start, 1.0)`` with ``0 < start <= 1``, ramped
            over the same ``steps`` (geometric by default); the objective then targets
            ``p(z) p(data | z)^beta``, the prior at ``beta -> 0`` and the posterior at
            ``beta = 1``. Default here ``1.0``: no tempering (the constructor builds exactly
            the schedule written); :meth:`over`, the default recipe, ramps
            :data:`DEFAULT_BETA` = ``(1e-2, 1.0)`` unless told otherwise. Tempering lets the
            map spread over the prior and follow the posterior as its modes separate, instead
            of committing to the first mode it meets (docs/hard_posteriors.md: on a four-mode
            posterior ``beta=(1e-2, 1.0)`` puts mass on every mode, where the untempered
            objective keeps one). Start ``beta`` below the value where the modes separate.

    Example:
        >>> a = Annealing(eps=(1.0, 1e-2), lam=(1.0, 1e2), steps=2)
        >>> [tuple(round(v, 4) for v in a.values(s)) for s in range(4)]
        [(1.0, 1.0), (0.1, 10.0), (0.01, 100.0), (0.01, 100.0)]
        >>> a.step()
        >>> round(a.eps, 4), round(a.lam, 4)
        (0.1, 10.0)
    """

    def __init__(
        self,
        eps: float | tuple[float, float] | Schedule = DEFAULT_EPS,
        lam: float | tuple[float, float] | Schedule = DEFAULT_LAM,
        steps: int = 1000,
        *,
        kind: str = "geometric",
        beta: float | tuple[float, float] | Schedule = 1.0,
    ) -> None:
        self.steps = _check_steps(steps)
        self.kind = kind
        self.eps_schedule = _as_schedule(eps, steps, kind, "eps")
        self.lam_schedule = _as_schedule(lam, steps, kind, "lam")
        self.beta_schedule = _as_schedule(beta, steps, kind, "beta")
        b0, b1 = self.beta_schedule.start, self.beta_schedule.end
        if not (0 < b0 <= b1 == 1):
            raise ValueError(
                f"beta must lie in (0, 1], not decrease and end at 1 (the posterior), got "
                f"start={b0}, end={b1}; e.g. beta=(1e-2, 1.0)"
            )
        self.step_count = 0
        e0, e1 = self.eps_schedule.start, self.eps_schedule.end
        if not (0 < e0 <= 1 and 0 < e1 <= 1):
            raise ValueError(f"eps must lie in (0, 1], got start={e0}, end={e1}")
        if e1 > e0:
            raise ValueError(f"eps must not increase: end={e1} > start={e0}; anneal towards 0")
        l0, l1 = self.lam_schedule.start, self.lam_schedule.end
        if not (l0 > 0 and l1 > 0):
            raise ValueError(f"lam must be > 0, got start={l0}, end={l1}")
        if l1 < l0:
            raise ValueError(f"lam must not decrease: end={l1} < start={l0}; anneal towards inf")

    @classmethod
    def over(
        cls,
        total_steps: int,
        *,
        fraction: float = RAMP_FRACTION,
        eps: float | tuple[float, float] | Schedule = DEFAULT_EPS,
        lam: float | tuple[float, float] | Schedule = DEFAULT_LAM,
        kind: str = "geometric",
        beta: float | tuple[float, float] | Schedule = DEFAULT_BETA,
    ) -> Annealing:
        """The library's default recipe: ramp over ``fraction`` of ``total_steps`` training
        steps (at least one), then hold.

        ``beta``: the likelihood temperature ramp, as in :class:`Annealing`, on by default
        here: :data:`DEFAULT_BETA` = ``(1e-2, 1.0)`` on the same ramp. ``beta=1.0`` gives the
        untempered objective (the recipe before 2026-12-05; also what objectives that do not
        temper, such as the amortized importance-weighted ones, need). :func:`pyro_kr.fit`
        adds its lr decay after the ramp by default (``lr_decay=None``); together these are
        the default recipe measured in docs/hard_posteriors.md.

        Example:
            >>> a = Annealing.over(1000)
            >>> a.steps, a.beta_schedule.start, a.beta_schedule.end
            (700, 0.01, 1.0)
            >>> Annealing.over(1000, beta=1.0).beta  # untempered
            1.0
        """
        _check_steps(total_steps)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
        return cls(eps, lam, steps=max(int(fraction * total_steps), 1), kind=kind, beta=beta)

    def values(self, step: int) -> tuple[float, float]:
        """``(eps, lam)`` at ``step``, a pure function of the step."""
        return self.eps_schedule(step), self.lam_schedule(step)

    @property
    def eps(self) -> float:
        """Current ``eps``."""
        return self.eps_schedule(self.step_count)

    @property
    def lam(self) -> float:
        """Current ``lam``."""
        return self.lam_schedule(self.step_count)

    @property
    def beta(self) -> float:
        """Current likelihood temperature ``beta`` (1.0 unless a ``beta`` ramp was given)."""
        return self.beta_schedule(self.step_count)

    def step(self) -> None:
        """Advance the counter by one step."""
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])

    def __repr__(self) -> str:
        beta = "" if self.beta_schedule == ConstantSchedule.of(1.0) else (
            f"beta={self.beta_schedule}, "
        )
        return (
            f"Annealing(eps={self.eps_schedule}, lam={self.lam_schedule}, {beta}"
            f"step_count={self.step_count})"
        )
