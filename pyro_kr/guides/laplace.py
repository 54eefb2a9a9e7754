"""Laplace initialization of a KR guide's affine part: the mode and the curvature there.

``AutoKR(model, init_scale="laplace")`` starts the map's affine part at the Laplace
approximation of the posterior in the packed unconstrained space: ``loc`` at the mode of
``log p(x, z) + log|det J|`` (L-BFGS from ``init_loc_fn``'s point) and
``scale_tril = cholesky(H^-1)`` with ``H`` the Hessian of ``-log p`` there. For a Gaussian
posterior this *is* the KR map (the training has nothing left to do); for an ill-conditioned
one (posterior sds spanning orders of magnitude, as in most inverse problems) it spares the
optimizer the thousands of steps it needs to shrink a scale by 100x.

Pyro's :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` computes the same Hessian, but
only after an SVI fit of its own ``AutoDelta`` guide; here the mode is found directly by
L-BFGS on the packed log density, with no second guide and no SVI loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to

from pyro_kr.transforms.affine import MIN_DIAGONAL

__all__ = [
    "LaplaceError", "ModeSurvey", "find_mode", "laplace_init", "other_mode",
    "packed_log_density", "prior_starts", "survey_modes",
]


class LaplaceError(ValueError):
    """The Laplace initialization failed: no finite mode or a Hessian that is not positive."""


def packed_log_density(guide, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``log p(data, T^-1(z)) + log|det J_{T^-1}(z)|`` at a packed unconstrained ``z (d,)``.

    ``guide`` is a set-up :class:`~pyro_kr.guides.packing.PackedKRGuide` (its site slices and
    supports define the packing). The model runs under ``poutine.block`` with its latent sites
    conditioned on the unpacked values, so nothing leaks into an enclosing trace.
    """
    values, log_jacobian = {}, z.new_zeros(())
    shapes = guide.unconstrained_shapes
    for name, block in guide.site_slices().items():
        site = guide.prototype_trace.nodes[name]
        transform = biject_to(site["fn"].support)
        u = z[block].reshape(shapes[name])
        x = transform(u)
        values[name] = x
        log_jacobian = log_jacobian + transform.log_abs_det_jacobian(u, x).sum()
    with poutine.block():
        trace = poutine.trace(poutine.condition(guide.model, data=values)).get_trace(
            *args, **kwargs
        )
    return trace.log_prob_sum() + log_jacobian


def find_mode(guide, loc: torch.Tensor, *args, max_iter: int = 200, **kwargs) -> torch.Tensor:
    """The posterior mode in the packed unconstrained space found by L-BFGS from ``loc``.

    Args:
        guide: a set-up packed KR guide (see :func:`packed_log_density`).
        loc: starting point of the search, shape ``(d,)``.
        *args, **kwargs: the model's arguments.
        max_iter: L-BFGS iterations (strong-Wolfe line search).

    Returns:
        The point the search ended at, shape ``(d,)``.

    Raises:
        LaplaceError: the log density is not finite at the start or at the end of the search,
            or the model rejects a point of the search.
    """
    z = loc.detach().clone().requires_grad_(True)

    def negative_log_density(point: torch.Tensor) -> torch.Tensor:
        return -packed_log_density(guide, point, *args, **kwargs)

    with torch.enable_grad():
        start = negative_log_density(z)
        if not torch.isfinite(start):
            raise LaplaceError(
                f"init_scale='laplace': the log density is {-float(start)} at the initial point; "
                "choose an init_loc_fn whose point the model supports, or pass a numeric "
                "init_scale"
            )
        optimizer = torch.optim.LBFGS(
            [z], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
            tolerance_change=1e-12, history_size=20,
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = negative_log_density(z)
            value.backward()
            return value

        try:
            optimizer.step(closure)
            mode = z.detach()
            value = float(negative_log_density(mode))
        except (ValueError, RuntimeError) as exc:  # the model refused a point of the search
            # (e.g. Pyro's argument validation on a NaN or zero scale far along the search)
            raise LaplaceError(
                "init_scale='laplace': the search for the posterior mode ran off to a point "
                f"the model rejects ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "the posterior may have no mode (an improper prior, or a centered "
                "hierarchical funnel). Pass a numeric init_scale"
            ) from exc
        if not math.isfinite(value) or not bool(torch.isfinite(mode).all()):
            raise LaplaceError(
                "init_scale='laplace': the search for the posterior mode ran off to a "
                f"non-finite point (log density {-value}); the posterior may have no mode (an "
                "improper prior, or a centered hierarchical funnel). Pass a numeric init_scale"
            )
    return mode


def laplace_init(
    guide, loc: torch.Tensor, *args, max_iter: int = 200, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(mode, cholesky(H^-1))`` of the packed posterior, shapes ``(d,)`` and ``(d, d)``.

    Args:
        guide: a set-up packed KR guide (see :func:`packed_log_density`).
        loc: starting point of the L-BFGS search (:func:`find_mode`), shape ``(d,)``.
        *args, **kwargs: the model's arguments.
        max_iter: L-BFGS iterations (strong-Wolfe line search).

    Raises:
        LaplaceError: the log density is not finite at the start or at the end of the search
            (an improper or unbounded posterior, such as a centered funnel), or the Hessian at
            the mode is not positive definite (not a strict local maximum).
    """
    mode = find_mode(guide, loc, *args, max_iter=max_iter, **kwargs)

    def negative_log_density(point: torch.Tensor) -> torch.Tensor:
        return -packed_log_density(guide, point, *args, **kwargs)

    with torch.enable_grad():
        hessian = torch.autograd.functional.hessian(negative_log_density, mode)
    hessian = 0.5 * (hessian + hessian.T)
    precision_tril, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0 or not bool(torch.isfinite(precision_tril).all()):
        smallest = float(torch.linalg.eigvalsh(hessian).min())
        raise LaplaceError(
            "init_scale='laplace': the Hessian of -log p at the mode found is not positive "
            f"definite (smallest eigenvalue {smallest:.3g}): the point is not a strict maximum. "
            "Pass a numeric init_scale, or start the search elsewhere with init_loc_fn"
        )
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    covariance = torch.cholesky_solve(eye, precision_tril)
    scale_tril, info = torch.linalg.cholesky_ex(0.5 * (covariance + covariance.T))
    diagonal = scale_tril.diagonal()
    if int(info) != 0 or not bool(torch.isfinite(scale_tril).all()) or not bool(
        (diagonal > MIN_DIAGONAL).all()
    ):
        # A Hessian that is positive definite in floating point can still give a Laplace
        # scale below what the affine map represents, or a factor that underflows: the mode
        # sits in the neck of a funnel.
        raise LaplaceError(
            "init_scale='laplace': the Laplace scales at the mode found are unusable (smallest "
            f"Cholesky diagonal {float(diagonal.min()):.3g}, the map needs > {MIN_DIAGONAL:g}); "
            "the posterior may have no mode (an improper prior, or a centered hierarchical "
            "funnel, where the search runs into the neck). Pass a numeric init_scale"
        )
    return mode, scale_tril


def prior_starts(guide, num: int, *args, seed: int = 0, **kwargs) -> torch.Tensor:
    """``num`` packed unconstrained points drawn from the prior, shape ``(num, d)``.

    The model runs ``num`` times with its observed sites observed (so the latents are joint
    prior draws) inside :func:`torch.random.fork_rng` seeded with ``seed``: deterministic, and
    the caller's random stream is left as it was.
    """
    shapes, slices = guide.unconstrained_shapes, guide.site_slices()
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    points = []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        torch.manual_seed(seed)
        for _ in range(num):
            trace = poutine.trace(guide.model).get_trace(*args, **kwargs)
            parts = []
            for name in slices:
                site = trace.nodes[name]
                u = biject_to(site["fn"].support).inv(site["value"])
                parts.append(u.reshape(-1))
            points.append(torch.cat(parts).reshape(-1))
    out = torch.stack(points)
    if out.shape[-1] != sum(math.prod(s) for s in shapes.values()):
        raise LaplaceError(
            f"a prior draw packs to {out.shape[-1]} values, the guide to "
            f"{sum(math.prod(s) for s in shapes.values())}: the model's latent sites change "
            "from run to run"
        )
    return out


def other_mode(
    guide, mode: torch.Tensor, scale_tril: torch.Tensor, *args, num_starts: int = 4,
    tol: float = 1.0, seed: int = 0, **kwargs
) -> str | None:
    """Look for a second mode: the reason it was found, or ``None`` where none was.

    The mode search (:func:`find_mode`) is rerun from ``num_starts`` prior draws
    (:func:`prior_starts`); a search that ends more than ``tol`` Laplace standard deviations
    from ``mode`` (the distance ``|scale_tril^-1 (m - mode)|``), or fails, means the Laplace
    Gaussian at ``mode`` need not describe the posterior (several modes, or a posterior the
    search cannot settle), and the message says which start did what.

    Args:
        guide: a set-up packed KR guide (as :func:`packed_log_density`).
        mode, scale_tril: the Laplace fit to check, shapes ``(d,)`` and ``(d, d)``.
        num_starts: prior draws to start from.
        tol: the distance, in Laplace standard deviations, within which two searches count
            as the same mode.
        seed: the seed of the prior draws.
    """
    starts = prior_starts(guide, num_starts, *args, seed=seed, **kwargs)
    for k, start in enumerate(starts.to(mode)):
        try:
            found = find_mode(guide, start, *args, **kwargs)
        except LaplaceError as exc:
            return f"the mode search from prior draw {k} failed ({str(exc)[:160]})"
        white = torch.linalg.solve_triangular(
            scale_tril, (found - mode).unsqueeze(-1), upper=False
        ).squeeze(-1)
        distance = float(white.norm())
        if not distance <= tol:
            return (
                f"the mode search from prior draw {k} ended {distance:.3g} Laplace sds from "
                f"the first mode (tolerance {tol:g}): the posterior has several modes, or the "
                "search does not settle"
            )
    return None


@dataclass
class ModeSurvey:
    """What :func:`survey_modes` found: the distinct strict modes of the packed posterior.

    Attributes:
        modes: one ``(point (d,), log density, Laplace log mass)`` per distinct strict mode
            whose Laplace mass is at least ``min_mass`` of the largest, largest first.
        minor: distinct strict modes left out of ``modes`` for their small mass.
        searches: one line per search: where it started and what it found (a mode, a point
            that is not a strict mode, or a failure).
        skipped: why no search was run (``None`` when the survey ran).

    Example:
        >>> ModeSurvey(skipped="structure='plates'").summary()
        "no mode survey: structure='plates'"
        >>> ModeSurvey().several  # nothing found: not several
        False
    """

    modes: list[tuple[torch.Tensor, float, float]] = field(default_factory=list)
    minor: list[tuple[torch.Tensor, float, float]] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def several(self) -> bool:
        """Whether the survey found more than one mode holding mass."""
        return len(self.modes) > 1

    def summary(self) -> str:
        """One line: the modes found and their log densities, and the searches' count."""
        if self.skipped is not None:
            return f"no mode survey: {self.skipped}"
        found = ", ".join(f"{lp:.4g}" for _, lp, _ in self.modes) or "none"
        return (f"{len(self.modes)} distinct mode(s) holding mass (log densities {found}; "
                f"{len(self.minor)} minor) from {len(self.searches)} searches")


def _strict_mode(guide, point: torch.Tensor, *args, grad_tol: float, **kwargs):
    """``(log density, scale_tril)`` at ``point`` if it is a strict local maximum (a
    whitened gradient below ``grad_tol`` and a positive definite Hessian), else a reason."""

    def negative_log_density(z: torch.Tensor) -> torch.Tensor:
        return -packed_log_density(guide, z, *args, **kwargs)

    with torch.enable_grad():
        z = point.detach().clone().requires_grad_(True)
        value = negative_log_density(z)
        (gradient,) = torch.autograd.grad(value, z)
        hessian = torch.autograd.functional.hessian(negative_log_density, point.detach())
    hessian = 0.5 * (hessian + hessian.T)
    precision_tril, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0 or not bool(torch.isfinite(precision_tril).all()):
        return "the Hessian there is not positive definite"
    # |H^{-1/2} g|: the gradient in units of the Laplace sds (the distance to the mode of
    # the local quadratic, in those sds)
    white = torch.linalg.solve_triangular(precision_tril, gradient.unsqueeze(-1), upper=False)
    step = float(white.norm())
    if not step <= grad_tol:
        return f"not settled (the Newton step is {step:.3g} Laplace sds)"
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    scale_tril = torch.linalg.solve_triangular(precision_tril, eye, upper=False).T
    return -float(value.detach()), scale_tril


def survey_modes(
    guide, start: torch.Tensor, *args, num_starts: int = 4, seed: int = 0, tol: float = 1.0,
    min_mass: float = 0.01, grad_tol: float = 1e-2, **kwargs
) -> ModeSurvey:
    """Search the packed posterior for its strict modes from ``start`` and ``num_starts``
    prior draws.

    Every search is :func:`find_mode` (L-BFGS). Its end point counts as a strict mode when
    the Hessian of ``-log p`` there is positive definite and the Newton step
    ``|H^{-1/2} grad|`` is below ``grad_tol`` Laplace sds (a search that stopped on a ridge
    or in a funnel's neck does not count). Two modes are the same when each lies within
    ``tol`` Laplace sds of the other (``|L^-1 (m1 - m2)|`` with either mode's Laplace factor
    ``L``). A mode holds mass when its Laplace mass ``p(m) (2 pi)^{d/2} |det L|`` is at
    least ``min_mass`` of the largest. Deterministic: the prior draws use ``seed`` inside
    :func:`torch.random.fork_rng`, L-BFGS draws nothing.

    Args:
        guide: a set-up packed KR guide (as :func:`packed_log_density`).
        start: the first search's starting point, shape ``(d,)``.
        num_starts: further searches, from prior draws (:func:`prior_starts`).
        seed, tol, min_mass, grad_tol: as above.

    Returns:
        A :class:`ModeSurvey`; ``survey.several`` is true when two or more modes hold mass.
    """
    starts = [("the initial point", start.detach())]
    if num_starts > 0:
        draws = prior_starts(guide, num_starts, *args, seed=seed, **kwargs).to(start)
        starts += [(f"prior draw {k}", draw) for k, draw in enumerate(draws)]
    survey = ModeSurvey()
    found: list[tuple[torch.Tensor, float, float, torch.Tensor]] = []
    for label, point in starts:
        try:
            end = find_mode(guide, point, *args, **kwargs)
            strict = _strict_mode(guide, end, *args, grad_tol=grad_tol, **kwargs)
        except LaplaceError as exc:
            survey.searches.append(f"{label}: the search failed ({str(exc)[:120]})")
            continue
        if isinstance(strict, str):
            survey.searches.append(f"{label}: {strict}")
            continue
        log_density, scale_tril = strict
        for index, (mode, _, _, other_tril) in enumerate(found):
            near = all(
                float(torch.linalg.solve_triangular(
                    tril, (end - mode).unsqueeze(-1), upper=False).norm()) <= tol
                for tril in (scale_tril, other_tril)
            )
            if near:
                survey.searches.append(f"{label}: mode {index}")
                break
        else:
            log_mass = log_density + float(scale_tril.diagonal().log().sum())
            survey.searches.append(f"{label}: mode {len(found)} (log density "
                                   f"{log_density:.4g})")
            found.append((end, log_density, log_mass, scale_tril))
    if found:
        largest = max(mass for _, _, mass, _ in found)
        for mode, log_density, log_mass, _ in sorted(found, key=lambda m: -m[2]):
            keep = log_mass >= largest + math.log(min_mass)
            (survey.modes if keep else survey.minor).append((mode, log_density, log_mass))
    return survey
