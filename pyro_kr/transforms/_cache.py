"""A one-element transform cache that notices when the parameters change.

``torch.distributions.Transform`` with ``cache_size=1`` returns the cached output whenever it
is called again with the *same tensor object*. For a learnable map that is wrong as soon as an
optimizer has updated the parameters in place (a fixed batch of base samples reused across
steps, as in sample-average or L-BFGS fitting, gets the stale output and a freed graph), or
when the first call ran under ``torch.no_grad()`` (the cached output has no graph). This
mixin drops the cached values whenever the key they were computed under changes, so the cheap
``t.inv(t(x))`` round trip that Pyro relies on still hits the cache while stale hits cannot
happen. The key:

* the grad mode;
* each watched tensor's identity, storage (``data_ptr``) and version counter: in-place
  writes under ``torch.no_grad()`` (``set_loc``, ``load_state_dict``, Pyro's param store)
  bump the version, a swapped ``p.data = ...`` changes the storage;
* the number of ``torch.optim.Optimizer`` steps taken in this process (a global post-step
  hook, :func:`torch.optim.optimizer.register_optimizer_step_post_hook`). Optimizers that
  write through ``p.data`` (Pyro's ``ClippedAdam``: ``p.data.addcdiv_(...)``) change the
  values WITHOUT bumping the version counter; every torch optimizer (those of ``pyro.optim``
  included) runs the hook after its step.

Not covered: a hand-written update through ``.data`` outside any optimizer
(``p.data -= lr * p.grad``); use ``with torch.no_grad(): p -= lr * p.grad`` instead (it bumps
the version), or call the map on a new input tensor. A value comparison with copies of the
parameters would cover it too, at the price of one pass over every parameter per call (+30% of
the step time of a dense ``AutoKR`` with 102 latents, measured), so it is not done.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class ParameterState:
    """The state of some tensors' values, for cache keys: equal states mean equal values.

    Holds weak references to the tensors (a freed tensor whose address and storage are reused
    by a new one cannot match), their storages (``data_ptr``) and version counters, and the
    process's count of optimizer steps; see the module docstring for what it covers.

    Example:
        >>> import torch
        >>> p = torch.zeros(3)
        >>> s = ParameterState([p])
        >>> s == ParameterState([p])
        True
        >>> with torch.no_grad():
        ...     _ = p.add_(1.0)
        >>> s == ParameterState([p])
        False
    """

    __slots__ = ("_keys", "_refs", "_steps")

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        tensors = tuple(tensors)
        self._steps = _optimizer_steps
        self._keys = tuple((t.data_ptr(), t._version) for t in tensors)
        self._refs = tuple(weakref.ref(t) for t in tensors)

    @classmethod
    def _stale(cls) -> ParameterState:
        """A state equal to no other (what a pickled state becomes when loaded)."""
        state = cls(())
        state._refs = None
        return state

    def __reduce__(self):
        # weak references do not pickle (torch.save of a guide); a loaded cache is stale
        return (ParameterState._stale, ())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParameterState):
            return NotImplemented
        if self._refs is None or other._refs is None:
            return False
        return (
            self._steps == other._steps
            and self._keys == other._keys
            and all(
                a() is not None and a() is b()
                for a, b in zip(self._refs, other._refs, strict=True)
            )
        )

    __hash__ = None  # type: ignore[assignment]


class ParameterAwareCache:
    """Mixin for :class:`~torch.distributions.Transform` subclasses; list it first in the bases.

    Subclasses may override :meth:`_watched_tensors` (default: ``self.parameters()``).
    """

    def _watched_tensors(self) -> Iterable[torch.Tensor]:
        return self.parameters()  # type: ignore[attr-defined]

    def _refresh_cache(self) -> None:
        state = (torch.is_grad_enabled(), ParameterState(self._watched_tensors()))
        if state != getattr(self, "_cache_state", None):
            self._cached_x_y = None, None
            self._cached_log_det = None
            self._cached_params = None
            self._cache_state = state

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        return super().__call__(x)  # type: ignore[misc]

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        return super()._inv_call(y)  # type: ignore[misc]
