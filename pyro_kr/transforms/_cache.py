"""A one-element transform cache that notices when the parameters change.

``torch.distributions.Transform`` with ``cache_size=1`` returns the cached output whenever it
is called again with the *same tensor object*. For a learnable map that is wrong as soon as an
optimizer has updated the parameters in place (a fixed batch of base samples reused across
steps, as in sample-average or L-BFGS fitting, gets the stale output and a freed graph), or
when the first call ran under ``torch.no_grad()`` (the cached output has no graph). This
mixin keys the cache on the parameters' identities and version counters and on the grad mode,
so the cheap ``t.inv(t(x))`` round trip that Pyro relies on still hits the cache while stale
hits cannot happen.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ParameterAwareCache:
    """Mixin for :class:`~torch.distributions.Transform` subclasses; list it first in the bases.

    Subclasses may override :meth:`_watched_tensors` (default: ``self.parameters()``).
    """

    def _watched_tensors(self) -> Iterable[torch.Tensor]:
        return self.parameters()  # type: ignore[attr-defined]

    def _refresh_cache(self) -> None:
        versions = tuple((id(t), t._version) for t in self._watched_tensors())
        state = (torch.is_grad_enabled(), versions)
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
