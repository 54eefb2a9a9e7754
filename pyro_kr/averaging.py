"""Iterate averaging of the parameters in Pyro's param store (Polyak-Ruppert / SWA).

Stochastic gradient steps end in a cloud around the optimum: with learning rate ``a`` and
gradient noise of covariance ``S`` the last iterate ``theta_n`` scatters with a spread of
order ``a S``, whatever the number of steps. The tail average

    theta_bar = 1 / (n - k) * sum_{t = k+1}^{n} theta_t

of the last ``n - k`` iterates averages that scatter out (its noise falls roughly like
``1 / (n - k)`` for weakly correlated iterates, Polyak and Juditsky 1992; Izmailov et al. 2018
for the same average of a network's weights, "SWA"). An exponential moving average
``theta_bar <- d theta_bar + (1 - d) theta_t`` weighs the last ``~1 / (1 - d)`` iterates instead.

The average is taken over the values Pyro's param store *stores*: the unconstrained values
(``pyro.get_param_store().named_parameters()``). A parameter declared with a constraint
(e.g. ``constraint=positive``) is averaged in its unconstrained space (for ``positive``:
``log``), so the swapped-in constrained value is ``exp(mean(log x_t))``, a geometric mean,
not the arithmetic mean of the constrained values; it always satisfies the constraint.

:class:`ParamAverage` accumulates after each optimizer step (:meth:`ParamAverage.update`) and
copies the average into the live parameters in place at the end
(:meth:`ParamAverage.swap_in`); :func:`average_start` turns a user's ``average_from`` (a
fraction of the steps or a step) into the number of steps skipped. The updates use
``torch.optim.swa_utils``' multi-tensor average functions, per device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn

__all__ = ["ParamAverage", "average_start"]


def average_start(average_from: float | int | None, steps: int) -> int | None:
    """Steps to skip before a tail average of ``steps`` optimizer steps starts.

    Args:
        average_from: ``None`` (no averaging: returns ``None``); a float in ``(0, 1)``: the
            fraction of the steps *before* the average, which covers the iterates after steps
            ``floor(average_from * steps) + 1, ..., steps`` (0.75 of 1,000 steps: the last
            250 iterates); an int ``k`` with ``0 <= k < steps``: the iterates after steps
            ``k + 1, ..., steps`` (``0``: all of them).
        steps: the number of optimizer steps of the run (int >= 1).

    Returns:
        ``k``, the number of leading steps left out (``None`` for ``average_from=None``).

    Raises:
        ValueError: ``average_from`` is a bool, a float outside ``(0, 1)``, an int outside
            ``[0, steps)``, or of another type.

    Example:
        >>> average_start(0.75, 1000), average_start(900, 1000), average_start(None, 10)
        (750, 900, None)
    """
    if average_from is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(average_from, bool) or not isinstance(average_from, int | float):
        raise ValueError(
            "average_from must be None (no averaging), a fraction in (0, 1) of the steps "
            f"before the tail average, or an int step in [0, steps); got {average_from!r}"
        )
    if isinstance(average_from, float):
        if not 0.0 < average_from < 1.0:
            raise ValueError(
                f"average_from={average_from!r}: a float is the fraction of the steps before "
                "the tail average and must lie in (0, 1), e.g. 0.75 for the last quarter; "
                "pass an int for a step"
            )
        return int(math.floor(average_from * steps))
    if not 0 <= average_from < steps:
        raise ValueError(
            f"average_from={average_from!r}: an int is the step after which the tail average "
            f"starts and must lie in [0, steps) = [0, {steps}); pass a float in (0, 1) for a "
            "fraction"
        )
    return int(average_from)


class ParamAverage:
    """Tail average (or exponential moving average) of the parameters in Pyro's param store.

    Call :meth:`update` once after every optimizer step; the first ``start`` calls are
    skipped, every later call folds the current parameters into the average. At the end,
    :meth:`swap_in` copies the averaged values into the live parameters in place (so modules
    holding the same tensors, e.g. a guide's networks, see them) and returns the values it
    replaced.

    Args:
        start: number of leading updates (optimizer steps) left out of the average, an int
            >= 0 (e.g. :func:`average_start` of a fraction).
        decay: ``None`` (default): the uniform tail average of the iterates after step
            ``start`` (``torch.optim.swa_utils.get_swa_multi_avg_fn``); a float in ``(0, 1)``:
            an exponential moving average with this decay per step, started at the first
            included iterate, without bias correction (``get_ema_multi_avg_fn``).
        names: parameter names to average (default: every parameter in the store at the first
            included update). Others are left as they are by :meth:`swap_in`.

    Shapes, devices and dtypes: each averaged tensor has its parameter's (unconstrained)
    shape, device and dtype; the updates run per ``(device, dtype)`` group. The set of
    averaged parameters is fixed at the first included update: a parameter missing from the
    store later, or a new one among ``names``, raises.

    Attributes:
        count: number of iterates averaged so far (``0`` until step ``start + 1``).
        seen: number of :meth:`update` calls so far.

    Example:
        >>> import pyro, torch
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.zeros(2))
        >>> avg = ParamAverage(start=1)
        >>> for t in range(4):  # stands for 4 optimizer steps: x takes the values 1, 2, 3, 4
        ...     with torch.no_grad():
        ...         _ = x.add_(1.0)
        ...     avg.update()
        >>> avg.count, avg.averaged()["x"].tolist()  # the mean of 2, 3, 4
        (3, [3.0, 3.0])
        >>> last = avg.swap_in()
        >>> pyro.param("x").tolist(), last["x"].tolist()
        ([3.0, 3.0], [4.0, 4.0])
    """

    def __init__(self, start: int = 0, decay: float | None = None,
                 names: list[str] | tuple[str, ...] | None = None) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0 (steps left out), got {start!r}")
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, int | float)
                                  or not 0 < decay < 1):
            raise ValueError(f"decay must be None (uniform tail average) or a float in (0, 1), "
                             f"e.g. 0.999; got {decay!r}")
        self.start, self.decay = start, None if decay is None else float(decay)
        self.names = None if names is None else tuple(names)
        self.count = 0
        self.seen = 0
        self._average: dict[str, torch.Tensor] = {}
        self._groups: dict[tuple, list[str]] = {}
        self._fn: Callable = (get_swa_multi_avg_fn() if decay is None
                              else get_ema_multi_avg_fn(float(decay)))

    def _live(self) -> dict[str, torch.Tensor]:
        live = dict(pyro.get_param_store().named_parameters())
        if self.names is None:
            return live
        missing = [n for n in self.names if n not in live]
        if missing:
            raise RuntimeError(f"the param store has no parameters {missing} to average")
        return {n: live[n] for n in self.names}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (after ``start`` skipped calls)."""
        self.seen += 1
        if self.seen <= self.start:
            return
        live = self._live()
        if self.count == 0:  # the first included iterate: the average starts at it
            self._average = {k: p.detach().clone() for k, p in live.items()}
            self._groups = {}
            for k, p in live.items():
                self._groups.setdefault((p.device, p.dtype), []).append(k)
            self.count = 1
            return
        if live.keys() != self._average.keys():
            new = sorted(set(live) - set(self._average))
            gone = sorted(set(self._average) - set(live))
            raise RuntimeError(
                f"the parameters changed while averaging (new: {new}, gone: {gone}); create "
                "every parameter before the average starts or pass names=..."
            )
        for keys in self._groups.values():
            self._fn([self._average[k] for k in keys], [live[k].detach() for k in keys],
                     self.count)
        self.count += 1

    def averaged(self) -> dict[str, torch.Tensor]:
        """The averaged unconstrained values, name -> tensor (the object's own tensors)."""
        if self.count == 0:
            raise RuntimeError(
                f"no iterate averaged yet: {self.seen} update(s) against start={self.start}"
            )
        return self._average

    @torch.no_grad()
    def swap_in(self) -> dict[str, torch.Tensor]:
        """Copy the average into the live parameters in place; return the values replaced.

        Returns:
            name -> detached copy of the unconstrained value each averaged parameter had
            before the swap (e.g. to put the last iterate back with ``pyro_kr.checkpoint``'s
            ``restore_params``).
        """
        average = self.averaged()
        live = self._live()
        if live.keys() != average.keys():
            raise RuntimeError(
                f"the param store's parameters {sorted(live)} differ from the averaged ones "
                f"{sorted(average)}"
            )
        replaced = {}
        for k, p in live.items():
            replaced[k] = p.detach().clone()
            p.data.copy_(average[k])
        return replaced

    def state_dict(self) -> dict:
        """The average's state (plain tensors and ints), e.g. for a checkpoint."""
        return {"start": self.start, "decay": self.decay, "names": self.names,
                "count": self.count, "seen": self.seen,
                "average": {k: v.clone() for k, v in self._average.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state (same ``start`` and ``decay`` required)."""
        if (state["start"], state["decay"]) != (self.start, self.decay):
            raise ValueError(f"state has start={state['start']}, decay={state['decay']}; this "
                             f"average has start={self.start}, decay={self.decay}")
        self.names = None if state["names"] is None else tuple(state["names"])
        self.count, self.seen = int(state["count"]), int(state["seen"])
        self._average = {k: v.clone() for k, v in state["average"].items()}
        self._groups = {}
        for k, v in self._average.items():
            self._groups.setdefault((v.device, v.dtype), []).append(k)
