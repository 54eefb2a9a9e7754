"""Errors of the first two marginal moments, in units of the reference's standard deviation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyro_kr.metrics._inputs import Draws, as_pair, flatten_names


@dataclass(frozen=True)
class MomentErrors:
    """Per-coordinate and worst-case moment errors (see :func:`moment_errors`).

    Attributes:
        mean: ``|mean(x)_i - mean(ref)_i| / sd(ref)_i`` per coordinate, tuple of length ``d``.
        sd: ``|sd(x)_i - sd(ref)_i| / sd(ref)_i`` per coordinate.
        names: coordinate labels (``name`` or ``name[i]`` for dict input, else ``"x[i]"``).
        max_mean: ``max_i mean[i]``.
        max_sd: ``max_i sd[i]``.
    """

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    names: tuple[str, ...]
    max_mean: float
    max_sd: float

    def as_dict(self) -> dict[str, float]:
        """Return ``{"mean_error": max_mean, "sd_error": max_sd}`` (JSON friendly)."""
        return {"mean_error": self.max_mean, "sd_error": self.max_sd}


def moment_errors(x: Draws, reference: Draws) -> MomentErrors:
    """Return the errors of the marginal means and standard deviations of ``x``.

    Both are measured in units of the reference's marginal standard deviation, coordinate by
    coordinate: a mean error of 0.1 means the approximation's mean is off by a tenth of a
    posterior standard deviation. Standard deviations use the ``n - 1`` denominator.

    Args:
        x: draws of shape ``(n, d)`` (or ``(n,)``, or a dict ``name -> (n, ...)``).
        reference: reference draws of shape ``(m, d)`` (a dict must have the same keys).

    Returns:
        A :class:`MomentErrors`.

    Raises:
        ValueError: on mismatched coordinates, NaN, or a reference coordinate with zero spread.

    Example:
        >>> import numpy as np
        >>> ref = np.array([[0.0], [2.0]])  # mean 1, sd sqrt(2)
        >>> e = moment_errors(ref + 1.0, ref)
        >>> round(e.max_mean, 4), e.max_sd
        (0.7071, 0.0)
    """
    xt, rt = as_pair("moment_errors", x, reference, names=("x", "reference"))
    sd_ref = rt.std(0)
    if bool((sd_ref <= 0).any()):
        raise ValueError(
            "moment_errors needs a reference with positive standard deviation in every "
            f"coordinate, got sd {sd_ref.tolist()}"
        )
    mean_err = ((xt.mean(0) - rt.mean(0)).abs() / sd_ref).tolist()
    sd_err = ((xt.std(0) - sd_ref).abs() / sd_ref).tolist()
    if isinstance(x, Mapping):
        names = flatten_names(x)
    else:
        names = [f"x[{i}]" for i in range(xt.shape[1])]
    return MomentErrors(
        mean=tuple(mean_err),
        sd=tuple(sd_err),
        names=tuple(names),
        max_mean=max(mean_err),
        max_sd=max(sd_err),
    )
