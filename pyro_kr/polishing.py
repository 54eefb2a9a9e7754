"""A deterministic stage after SGD: L-BFGS on the KL of fixed reference draws.

Stochastic gradient descent on the ELBO stops where its gradient noise balances the step; on
a posterior whose spread the reverse KL barely rewards (the scale of a hierarchy's globals
when there are few groups) that can be well short of the best map in the family. Fixing the
reference draws turns the objective into a deterministic function of the map's parameters,

    L_M(phi) = (1/M) sum_m [log N(x_m; 0, I) - log|det DT_phi(x_m)| - log p(y, T_phi(x_m))],

the sample average approximation of ``KL(T_phi # N(0, I) || p(. | y)) - log p(y)`` (Burroni,
Domke and Sheldon 2024; Giordano, Ingram and Broderick 2024), which a quasi-Newton method
with a line search can minimize to convergence. The draws are scrambled Sobol points pushed
through the normal quantile (``sampler="sobol"``; they make ``L_M`` far closer to its limit
than Monte Carlo draws of the same number, so the map fits the posterior rather than the
sample) or plain Monte Carlo (``sampler="mc"``). ``log p`` includes the Jacobian of each
site's constraining transform, as the guide's own ``log q`` does.

:func:`polish` runs it on a trained :class:`~pyro_kr.AutoKR` (dense or ``structure="plates"``,
without plate subsampling), in double precision by default, then checks the result on fresh
draws: the negative ELBO before and after on the same ``heldout_particles`` fresh Monte Carlo
draws, paired. A polish that makes the fresh estimate worse (by more than two standard errors
of the paired difference: the map has fitted the fixed draws, not the posterior) is undone
with a ``RuntimeWarning``; so is an interrupt or a failure, and a non-finite objective raises.
The measurements are in docs/hierarchical.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine

from pyro_kr._batching import batch_problem
from pyro_kr.checkpoint import restore_params, snapshot_params
from pyro_kr.guides.autokr import AutoKR
from pyro_kr.guides.chunks import chunk_rows, sampling_cost
from pyro_kr.progress import progress_bar
from pyro_kr.traces import draws_plate, log_prob_per_draw, plate_depth

__all__ = ["PolishResult", "polish", "reference_points"]

logger = logging.getLogger(__name__)

SAMPLERS = ("sobol", "mc")
TOLERANCE = 1e-10
"""L-BFGS stops when an iteration changes the objective by less than this many nats."""
EARLY_STOP = 5
"""An L-BFGS run that stops after fewer iterations than this ends the polish; a longer run
that stops before ``max_iter`` (its line search found no decrease: the curvature pairs went
stale) is followed by a fresh one."""


@dataclass
class PolishResult:
    """What :func:`polish` did.

    Attributes:
        loss_before, loss_after: ``L_M`` on the fixed draws before and after (nats; the
            negative ELBO of the fixed draws).
        heldout_before, heldout_after: the negative ELBO on ``heldout_particles`` fresh Monte
            Carlo draws (the same draws before and after).
        heldout_se: standard error of the paired difference ``heldout_after - heldout_before``.
        iterations, evaluations, rounds: L-BFGS iterations, objective evaluations, and runs
            (a fresh run follows one that stops early).
        kept: whether the polished map was kept (``False``: it made the fresh estimate worse
            by more than two standard errors and the map before the polish was put back).
    """

    loss_before: float
    loss_after: float
    heldout_before: float
    heldout_after: float
    heldout_se: float
    iterations: int
    evaluations: int
    rounds: int
    kept: bool


def reference_points(num: int, dim: int, sampler: str = "sobol", seed: int = 0,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(num, dim)`` reference draws of ``N(0, I)``: scrambled Sobol points through the
    normal quantile (``"sobol"``) or Monte Carlo draws (``"mc"``), from their own seeded
    stream (the global random stream is not touched).

    Example:
        >>> x = reference_points(1024, 3)
        >>> x.shape, bool(x.mean(0).abs().max() < 0.01)
        (torch.Size([1024, 3]), True)
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if num < 2:
        raise ValueError(f"num_particles must be >= 2, got {num}")
    if sampler == "mc":
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(num, dim, generator=generator, dtype=dtype)
    if dim > torch.quasirandom.SobolEngine.MAXDIM:
        raise ValueError(
            f"Sobol points exist up to {torch.quasirandom.SobolEngine.MAXDIM} dimensions, the "
            f"guide has {dim}: pass sampler='mc'"
        )
    sobol = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = sobol.draw(num, dtype=torch.float64).clamp(1e-10, 1 - 1e-10)
    return torch.special.ndtri(u).to(dtype)


def _check_guide(guide) -> None:
    if not isinstance(guide, AutoKR):
        raise TypeError(f"polish takes a pyro_kr.AutoKR guide, got {type(guide).__name__}")
    if guide.prototype_trace is None:
        raise RuntimeError("polish needs a set-up guide: train it with fit (or call it once)")
    plan = guide.structure_plan
    if plan is not None and plan.subsampled:
        raise ValueError(
            "polish evaluates every group and cannot run on a guide trained with plate "
            "subsampling (pyro.plate(..., subsample_size=B)): build the guide on the model "
            "without subsample_size, or keep the SGD fit"
        )


class _Objective:
    """``sum_m [log q(z_m) - log p(y, z_m)]`` over fixed reference draws, with the guide's
    auxiliary latent conditioned on ``T(x)`` (Pyro's own unpacking, constraints and plates),
    in chunks of draws."""

    def __init__(self, model, guide, args, kwargs):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.transform = guide.get_transform(*args, **kwargs)
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), poutine.block(), torch.no_grad():
            guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)  # the stream untouched
        auxiliary = [name for name, site in guide_tr.nodes.items()
                     if site["type"] == "sample" and site["infer"].get("is_auxiliary")]
        if len(auxiliary) != 1:
            raise ValueError(f"expected one auxiliary latent site in the guide, got {auxiliary}")
        self.latent_name = auxiliary[0]
        self.depth = plate_depth(guide.prototype_trace)
        problem = batch_problem(model, guide, args, kwargs, num_draws=2, dim=-self.depth - 1)
        if problem is not None:
            raise ValueError(
                f"polish evaluates the model on many draws at once, in a plate at dim "
                f"{-self.depth - 1}, and the model does not vectorize: {problem}. Write the "
                "model so that its latents broadcast over leading batch dims (e.g. "
                "torch.stack([a, b], -1), not torch.stack([a, b]))"
            )
        d = guide.latent_dim
        self.rows = lambda n: chunk_rows(n, d, cost=sampling_cost(guide))

    def chunk(self, x: torch.Tensor) -> torch.Tensor:
        """``log q - log p`` per draw of a chunk ``x (n, d)``: ``(n,)``."""
        n, depth = x.shape[0], self.depth
        z = self.transform(x)
        latent = z.reshape((n,) + (1,) * depth + z.shape[-1:])  # the draws plate's batch shape
        log_q = (torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
                 - self.transform.log_abs_det_jacobian(x, z))
        fixed = {self.latent_name: latent}
        guide = poutine.condition(draws_plate(self.guide, n, depth), data=fixed)
        with poutine.block():
            guide_tr = poutine.trace(guide).get_trace(*self.args, **self.kwargs)
            model_tr = poutine.trace(
                poutine.replay(draws_plate(self.model, n, depth), trace=guide_tr)
            ).get_trace(*self.args, **self.kwargs)
        keep = lambda name, site: name != self.latent_name  # noqa: E731
        guide_tr.compute_log_prob(site_filter=keep)
        model_tr.compute_log_prob()
        for trace, sign in ((guide_tr, 1.0), (model_tr, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and name != self.latent_name and "log_prob" in site:
                    log_q = log_q + sign * log_prob_per_draw(site["log_prob"], n, depth)
        return log_q

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` per-draw values, without gradients."""
        rows = self.rows(x.shape[0])
        with torch.no_grad():
            return torch.cat([self.chunk(x[i:i + rows]) for i in range(0, x.shape[0], rows)])

    def mean_backward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over ``x``, with its gradient accumulated chunk by chunk."""
        n, rows, total = x.shape[0], self.rows(x.shape[0]), 0.0
        for i in range(0, n, rows):
            part = self.chunk(x[i:i + rows]).sum() / n
            part.backward()
            total = total + part.detach()
        return total


def polish(
    model: Callable,
    guide: AutoKR,
    *args,
    num_particles: int = 4096,
    max_iter: int = 500,
    sampler: str = "sobol",
    dtype: torch.dtype | None = torch.float64,
    heldout_particles: int = 4096,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> PolishResult:
    """Minimize the KL of ``num_particles`` fixed reference draws with L-BFGS (in place).

    Run it after SGD (:func:`pyro_kr.fit`): the map's parameters in Pyro's param store are
    moved to the minimizer of ``L_M`` (module docstring), L-BFGS with a strong Wolfe line
    search, ``history_size=50``, started afresh where one run stops early, for at most
    ``max_iter`` iterations in all. The guide's draws, ``log_prob`` and every query then come
    from the polished map.

    Args:
        model, guide: the Pyro model and a trained :class:`~pyro_kr.AutoKR` (dense or
            ``structure="plates"``; not one trained with plate subsampling);
            ``*args, **kwargs`` are passed to both.
        num_particles: ``M``, the fixed draws (a power of 2 suits Sobol points).
        max_iter: the most L-BFGS iterations.
        sampler: ``"sobol"`` (scrambled Sobol points, the default) or ``"mc"``.
        dtype: the precision of the polish (default ``torch.float64``: in single precision
            L-BFGS can stop early on rounding). The map is cast to it for the polish and back
            afterwards; the model must then accept latent values of this dtype (data of
            another dtype is usually fine; a model that multiplies its latents by a float32
            matrix is not). ``None``: the map's own dtype.
        heldout_particles: fresh Monte Carlo draws of the check after the polish.
        seed: seed of the fixed and the fresh draws (the global random stream is untouched).
        progress: show the L-BFGS iterations and the best objective so far, as
            :func:`~pyro_kr.fit` shows its steps (a tqdm bar on a terminal or in a notebook,
            one plain line every 10 % of ``max_iter`` in logs).

    Returns:
        :class:`PolishResult`.

    Raises:
        TypeError, ValueError, RuntimeError: not a set-up ``AutoKR``, a subsampled one, a bad
            argument, a model that fails at ``dtype``, or a non-finite objective at the start
            (the parameters are then unchanged).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_kr
        >>> from pyro_kr.polishing import polish
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(z, 0.5), obs=torch.tensor(1.0))
        >>> pyro.clear_param_store()
        >>> guide = pyro_kr.AutoKR(model, map="affine")
        >>> _ = pyro_kr.fit(model, guide, steps=50, progress=False, check=False)
        >>> result = polish(model, guide, num_particles=256, max_iter=50, progress=False)
        >>> result.kept, result.loss_after <= result.loss_before
        (True, True)
    """
    _check_guide(guide)
    for name, value, least in (("num_particles", num_particles, 2), ("max_iter", max_iter, 1),
                               ("heldout_particles", heldout_particles, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype or None, got {dtype}")
    objective = _Objective(model, guide, args, kwargs)
    transform = objective.transform
    params = [p for p in transform.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the guide's map has no trainable parameters to polish")
    own_dtype = params[0].dtype
    dtype = own_dtype if dtype is None else dtype
    device = params[0].device
    d = guide.latent_dim
    x = reference_points(num_particles, d, sampler, seed, dtype).to(device)
    fresh = reference_points(heldout_particles, d, "mc", seed + 1, dtype).to(device)
    saved = snapshot_params()
    transform.to(dtype)
    ok = False
    bar = progress_bar(progress, max_iter, desc="polish", unit="it")
    try:
        try:
            heldout_start = objective.values(fresh)
            start = float(objective.values(x).mean())
        except (RuntimeError, TypeError) as error:
            raise RuntimeError(
                f"the model failed on latent values of dtype {dtype} ({type(error).__name__}: "
                f"{error}); pass dtype=None to polish in the guide's dtype {own_dtype}, or "
                "give the model data of that dtype"
            ) from error
        if not math.isfinite(start):
            raise RuntimeError(
                f"the objective is {start} at the start: the guide's draws reach where the "
                "model's log density is not finite; train the guide further first"
            )
        best = {"value": start, "params": [p.detach().clone() for p in params]}

        def closure():
            lbfgs.zero_grad()
            value = objective.mean_backward(x)
            if math.isfinite(float(value)) and float(value) < best["value"]:
                best["value"] = float(value)
                best["params"] = [p.detach().clone() for p in params]
            done = iterations + lbfgs.state[params[0]].get("n_iter", 0)  # L-BFGS's own count
            if done > bar.n:
                bar.set_postfix({"loss": f"{best['value']:.6g}"}, refresh=False)
                bar.update(done - bar.n)
            return value

        iterations = evaluations = rounds = 0
        while iterations < max_iter:
            lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter - iterations,
                                      history_size=50, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9, tolerance_change=TOLERANCE)
            lbfgs.step(closure)
            state = lbfgs.state[params[0]]
            iterations += state["n_iter"]
            evaluations += state["func_evals"]
            rounds += 1
            if state["n_iter"] < EARLY_STOP:
                break
        with torch.no_grad():  # the best point seen (the line search may end elsewhere)
            for p, b in zip(params, best["params"], strict=True):
                p.copy_(b)
        heldout_end = objective.values(fresh)
        ok = True
    finally:
        bar.close()
        transform.to(own_dtype)
        if not ok:  # an error or an interrupt: the map before the polish
            restore_params(saved)
    diff = (heldout_end - heldout_start).double()
    se = float(diff.std() / math.sqrt(heldout_particles))
    kept = not float(diff.mean()) > 2 * se
    result = PolishResult(
        loss_before=start, loss_after=best["value"],
        heldout_before=float(heldout_start.mean()), heldout_after=float(heldout_end.mean()),
        heldout_se=se, iterations=iterations, evaluations=evaluations, rounds=rounds, kept=kept,
    )
    if not kept:
        restore_params(saved)
        warnings.warn(
            f"the polish lowered the objective on its {num_particles} fixed draws "
            f"({start:.4f} -> {best['value']:.4f}) but raised the negative ELBO on "
            f"{heldout_particles} fresh draws ({result.heldout_before:.4f} -> "
            f"{result.heldout_after:.4f}, se {se:.4f}): it fitted the draws, not the "
            "posterior, and was undone; use more num_particles (or sampler='sobol')",
            RuntimeWarning, stacklevel=2,
        )
    logger.info("polish: %s", result)
    return result
