"""Embeddings of the observations: the context the conditional KR map is conditioned on.

The default, :class:`StandardizedMLP`, maps every observed value to the real line with the
inverse of ``biject_to(support)`` of its site (a log for positive data, the identity for real
data), standardizes it with statistics of prior-predictive simulations and returns the
standardized data next to an MLP of it (the skip keeps linear structure, which is exact for
Gaussian posteriors, one linear layer away). Any ``nn.Module`` mapping ``(*batch, *y_shape)``
to ``(*batch, c)`` can replace it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_kr._validation import check_dim

__all__ = ["StandardizedMLP"]


class StandardizedMLP(nn.Module):
    """``y -> concat(s, MLP(s))`` with ``s = (g(y) - loc) / scale``, ``g`` the unconstraining map.

    Args:
        input_dim: flattened observation size ``n``.
        output_dim: width of the MLP output; the embedding returns ``n + output_dim`` numbers.
        hidden_dims: widths of the MLP's hidden layers.
        loc, scale: standardization statistics, shape ``(n,)`` (default 0 and 1).
        unconstrain: elementwise map of the flattened data to R (default identity).

    Shapes: input ``(..., n)``, output ``(..., n + output_dim)``.

    Example:
        >>> import torch
        >>> emb = StandardizedMLP(3, 8)
        >>> emb(torch.randn(5, 3)).shape
        torch.Size([5, 11])
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        hidden_dims: Sequence[int] = (64, 64),
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        unconstrain=None,
    ) -> None:
        super().__init__()
        self.input_dim = check_dim("input_dim", input_dim)
        self.output_dim = check_dim("output_dim", output_dim)
        loc = torch.zeros(input_dim) if loc is None else torch.as_tensor(loc).reshape(-1)
        scale = torch.ones(input_dim) if scale is None else torch.as_tensor(scale).reshape(-1)
        if loc.shape != (input_dim,) or scale.shape != (input_dim,):
            raise ValueError(
                f"loc and scale must have shape ({input_dim},), got {tuple(loc.shape)} and "
                f"{tuple(scale.shape)}"
            )
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())
        self.unconstrain = unconstrain
        widths = [input_dim, *hidden_dims, output_dim]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(nn.ELU())
        self.net = nn.Sequential(*layers)

    @property
    def features(self) -> int:
        """Size of the embedding: ``input_dim + output_dim``."""
        return self.input_dim + self.output_dim

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        """``(g(y) - loc) / scale`` for flattened observations ``(..., n)``."""
        if y.shape[-1:] != (self.input_dim,):
            raise ValueError(
                f"StandardizedMLP expected input of shape (..., {self.input_dim}), "
                f"got shape {tuple(y.shape)}"
            )
        g = y if self.unconstrain is None else self.unconstrain(y)
        return (g - self.loc) / self.scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s = self.standardize(y)
        return torch.cat([s, self.net(s)], dim=-1)
