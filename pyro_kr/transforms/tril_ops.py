"""``x -> L x`` and ``y -> L^-1 y`` for a parameterized lower-triangular ``L``, without a
``d x d`` temporary per call.

``TriangularAffine`` stores ``L = tril(off_diag, -1) + diag(softplus(u))``. Building ``L`` on
every call costs a ``d x d`` allocation (three, with the mask and the diagonal): harmless once
per training step, but a sampler that calls the guide once per draw (Pyro's
``Predictive(..., parallel=False)``, the default) then allocates ``3 d^2`` floats per draw, and
glibc's heap, its mmap threshold raised by the first freed block, interleaves those blocks
with the small tensors each draw keeps: the resident memory grew by about one ``d x d`` matrix
per draw (332 MB for 1,000 draws at ``d = 301``).

Here ``L`` is assembled once per parameter state (detached, rebuilt when the parameters'
values may have changed) and the products go through autograd functions whose backward
passes compute the gradients of ``off_diag`` and of the diagonal directly, so the only
``d x d`` tensors are the parameters, their gradients and the one cached ``L``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from pyro_kr.transforms._cache import ParameterState

__all__ = ["TrilCache", "tril_matmul", "tril_solve"]


def _flat(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.expand(like.shape).reshape(-1, like.shape[-1])


class _TrilMatmul(torch.autograd.Function):
    """``x @ L.T`` with ``L = tril(off, -1) + diag(diag)`` given as ``tril`` (detached)."""

    @staticmethod
    def forward(ctx, x, off, diag, tril):  # noqa: D102
        ctx.save_for_backward(x, tril)
        return x @ tril.T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, tril = ctx.saved_tensors
        grad_x = grad_off = grad_diag = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ tril
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            outer = _flat(grad, grad).T @ _flat(x, grad)  # sum_b grad_b x_b^T, (d, d)
            if ctx.needs_input_grad[1]:
                grad_off = outer.tril(-1)
            if ctx.needs_input_grad[2]:
                grad_diag = outer.diagonal().clone()
        return grad_x, grad_off, grad_diag, None


class _TrilSolve(torch.autograd.Function):
    """``L^-1 r`` (forward substitution) with ``L`` as in :class:`_TrilMatmul`."""

    @staticmethod
    def forward(ctx, r, off, diag, tril):  # noqa: D102
        flat = r.reshape(-1, r.shape[-1])
        x = torch.linalg.solve_triangular(tril, flat.T, upper=False).T.reshape(r.shape)
        ctx.save_for_backward(x, tril)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, tril = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        h = torch.linalg.solve_triangular(tril.T, g.T, upper=True).T  # L^-T grad, rowwise
        grad_r = h.reshape(grad.shape) if ctx.needs_input_grad[0] else None
        grad_off = grad_diag = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            outer = -(h.T @ x.reshape(-1, x.shape[-1]))  # d(L^-1 r)/dL = -h x^T
            if ctx.needs_input_grad[1]:
                grad_off = outer.tril(-1)
            if ctx.needs_input_grad[2]:
                grad_diag = outer.diagonal().clone()
        return grad_r, grad_off, grad_diag, None


class TrilCache:
    """The detached ``L`` of one parameter state; rebuilt when a parameter's values may change.

    The state is a :class:`~pyro_kr.transforms._cache.ParameterState` of ``(off, raw_diag)``
    (identities, storages, version counters and the process's count of optimizer steps, so
    that optimizers writing through ``.data``, like Pyro's ``ClippedAdam``, are seen too), plus
    dtype and device.
    """

    def __init__(self) -> None:
        self._state: tuple | None = None
        self._tril: torch.Tensor | None = None

    def get(self, off: torch.Tensor, raw_diag: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        """``tril(off, -1) + diag(diag)`` (detached) for the current values of the parameters."""
        state = (ParameterState((off, raw_diag)), off.dtype, off.device)
        if self._tril is None or state != self._state:
            with torch.no_grad():
                self._tril = off.detach().tril(-1) + torch.diag_embed(diag.detach())
            self._state = state
        return self._tril


def tril_matmul(x: torch.Tensor, off: torch.Tensor, diag: torch.Tensor, tril: torch.Tensor):
    """``x @ L.T`` for ``x (..., d)``; gradients flow to ``x``, ``off`` and ``diag``."""
    return _TrilMatmul.apply(x, off, diag, tril)


def tril_solve(r: torch.Tensor, off: torch.Tensor, diag: torch.Tensor, tril: torch.Tensor):
    """``L^-1 r`` for ``r (..., d)``; gradients flow to ``r``, ``off`` and ``diag``."""
    return _TrilSolve.apply(r, off, diag, tril)
