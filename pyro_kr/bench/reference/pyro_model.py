"""MCMC references for any Pyro model: Pyro's potential as a PyTensor ``Op`` sampled by PyMC.

:func:`nuts_from_pyro` asks Pyro (``pyro.infer.mcmc.util.initialize_model``) for the model's
potential energy ``U(z) = -log p(x, T^{-1}(z)) - log|det J_{T^{-1}}(z)|`` on the packed
unconstrained latent vector ``z``, wraps ``-U`` and its autograd gradient as one PyTensor ``Op``
and lets PyMC's NUTS sample ``z`` (a ``pm.Flat`` vector with a ``pm.Potential``). The draws are
mapped back to the constrained, named sites. A user checks a guide against MCMC this way
without rewriting the model in PyMC.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pyro_kr._validation import check_dim
from pyro_kr.bench.reference import _cache, _io
from pyro_kr.bench.reference.nuts import load_or_build, quiet_pymc


class PyroPotential:
    """Pyro model's log density on the packed unconstrained latent vector, in numpy.

    Args:
        model: Pyro model (continuous latent sites; discrete enumerable sites are summed out).
        args, kwargs: the model's arguments.
        num_chains: how many initial points to draw (Pyro's ``init_to_uniform``).

    Attributes:
        names: latent site names in packing order; shapes: their event shapes;
        dim: length of the packed vector; init: initial points of shape ``(num_chains, dim)``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> pot = PyroPotential(model, (), {})
        >>> value, grad = pot.value_and_grad(np.zeros(1))
        >>> round(float(value), 4)  # log N(0; 0, 1): the Jacobian cancels the 1/s
        -0.9189
    """

    def __init__(self, model: Callable, args: tuple, kwargs: dict, *, num_chains: int = 1):
        from pyro.infer.mcmc.util import initialize_model

        init, potential_fn, transforms, _ = initialize_model(
            model, model_args=args, model_kwargs=kwargs, num_chains=num_chains
        )
        if not init:
            raise ValueError("nuts_from_pyro found no continuous latent sites in the model")
        self.names = list(init)
        first = next(iter(init.values()))
        self.dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        self.device = first.device
        lead = (num_chains,) if num_chains > 1 else ()
        self.shapes = {k: tuple(v.shape[len(lead) :]) for k, v in init.items()}
        self.sizes = [int(np.prod(self.shapes[k], dtype=np.int64)) for k in self.names]
        self.dim = int(sum(self.sizes))
        self.init = np.concatenate(
            [init[k].detach().reshape(num_chains, -1).cpu().double().numpy() for k in self.names],
            axis=-1,
        )
        self._potential_fn = potential_fn
        self._transforms = transforms

    def unpack(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``z`` of shape ``(..., dim)`` into unconstrained sites ``(..., *shape)``."""
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            block = z[..., start : start + size]
            out[name] = block.reshape(z.shape[:-1] + self.shapes[name])
            start += size
        return out

    def value_and_grad(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """Return ``(log density, gradient)`` at ``z`` of shape ``(dim,)`` (float64 numpy)."""
        zt = torch.as_tensor(np.asarray(z), dtype=self.dtype, device=self.device)
        zt = zt.detach().requires_grad_(True)
        with torch.enable_grad():
            try:
                logp = -self._potential_fn(self.unpack(zt))
            except (ValueError, RuntimeError):  # e.g. an ODE solver failing far in the tails
                return -np.inf, np.zeros(self.dim)
            if not torch.isfinite(logp):
                return -np.inf, np.zeros(self.dim)
            (grad,) = torch.autograd.grad(logp, zt)
        grad = grad.detach().cpu().double().numpy()
        if not np.isfinite(grad).all():
            return -np.inf, np.zeros(self.dim)
        return float(logp.detach()), grad

    def constrain(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Map unconstrained draws ``(..., dim)`` to named constrained sites ``(..., *shape)``."""
        with torch.no_grad():
            zt = torch.as_tensor(np.asarray(z), dtype=self.dtype, device=self.device)
            sites = self.unpack(zt)
            return {k: self._transforms[k].inv(v).cpu().double().numpy() for k, v in sites.items()}


def _logp_op(potential: PyroPotential):
    """Return a PyTensor ``Op``: ``z -> (log density, gradient)`` with ``grad`` defined."""
    import pytensor.tensor as pt
    from pytensor.gradient import DisconnectedType
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op

    class PyroLogpOp(Op):
        """Pyro log density and its gradient as a two-output PyTensor Op."""

        __props__ = ()

        def make_node(self, z):
            z = pt.as_tensor_variable(z)
            return Apply(self, [z], [pt.dscalar(), pt.dvector()])

        def perform(self, node, inputs, outputs):
            value, grad = potential.value_and_grad(inputs[0])
            outputs[0][0] = np.asarray(value, dtype=np.float64)
            outputs[1][0] = np.asarray(grad, dtype=np.float64)

        def grad(self, inputs, output_grads):
            g_value, g_grad = output_grads
            if not isinstance(g_grad.type, DisconnectedType):
                raise NotImplementedError("second derivatives of a Pyro potential")
            _, grad = self(inputs[0])
            return [g_value * grad]

    return PyroLogpOp()


def _model_digest(model: Callable, args: tuple, kwargs: dict) -> str:
    """Digest of the model's source and argument values (for the cache key)."""
    h = hashlib.sha256()
    h.update(getattr(model, "__qualname__", type(model).__name__).encode())
    try:
        h.update(inspect.getsource(model).encode())
    except (OSError, TypeError):
        pass
    for i, a in enumerate(args):
        h.update(f"arg{i}:".encode() + _value_digest(a).encode())
    for k in sorted(kwargs):
        h.update(f"{k}:".encode() + _value_digest(kwargs[k]).encode())
    return h.hexdigest()


def _value_digest(value: Any) -> str:
    if value is None:
        return "None"
    try:
        return _cache.array_digest(value)
    except (TypeError, ValueError):
        return repr(value)


def _sample_pyro(potential: PyroPotential, settings: dict, progressbar: bool):
    import pymc as pm

    op = _logp_op(potential)
    with pm.Model() as pmodel, quiet_pymc(not progressbar):
        z = pm.Flat("z", shape=(potential.dim,))
        pm.Potential("pyro_log_density", op(z)[0])
        step = pm.DEMetropolisZ() if settings["method"] == "demetropolisz" else None
        extra = {}
        if step is None and "target_accept" in settings:
            extra["target_accept"] = settings["target_accept"]
        initvals = [{"z": potential.init[c]} for c in range(settings["chains"])]
        start = time.perf_counter()
        idata = pm.sample(
            draws=settings["draws"],
            tune=settings["tune"],
            chains=settings["chains"],
            cores=1,  # the Op closes over torch objects: keep one process
            random_seed=settings["seed"],
            step=step,
            initvals=initvals,
            init="adapt_diag",
            progressbar=progressbar,
            compute_convergence_checks=False,
            return_inferencedata=True,
            model=pmodel,
            **extra,
        )
        wall = time.perf_counter() - start
    z_draws = np.asarray(idata.posterior["z"].values)  # (chain, draw, dim)
    posterior = potential.constrain(z_draws)
    stats = _io.sample_stats_arrays(idata)
    return _io.from_dict(posterior, sample_stats=stats), wall


def nuts_from_pyro(
    model: Callable,
    *args: Any,
    draws: int = 1000,
    chains: int = 4,
    tune: int = 1000,
    seed: int = 0,
    method: str = "nuts",
    target_accept: float = 0.8,
    cache: bool = False,
    cache_dir: str | os.PathLike | None = None,
    rhat_max: float = 1.01,
    min_ess: float | None = None,
    progressbar: bool = False,
    name: str | None = None,
    **kwargs: Any,
):
    """Sample any Pyro model's posterior with PyMC's NUTS through Pyro's own potential.

    Args:
        model: Pyro model with continuous latent sites (conditioned on its data).
        *args, **kwargs: the model's arguments (the keywords below are reserved).
        draws, chains, tune, seed, method, target_accept, rhat_max, min_ess, progressbar: as
            in :func:`pyro_kr.bench.reference.nuts`.
        cache: cache the draws on disk, keyed by the model's source, its argument values and
            the settings (off by default: a closure's captured state is not in the key).
        cache_dir: cache directory (see :func:`pyro_kr.bench.reference.nuts`).
        name: cache label; default the model function's name.

    Returns:
        ``arviz.InferenceData`` whose ``posterior`` holds each constrained latent site with
        shape ``(chains, draws, *site_shape)``; attributes as in
        :func:`~pyro_kr.bench.reference.nuts`.

    Raises:
        ReferenceQualityError: R-hat above ``rhat_max`` or bulk ESS below ``min_ess``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> idata = nuts_from_pyro(model, torch.ones(3), draws=300, chains=2)  # doctest: +SKIP
        >>> float(idata.posterior["mu"].mean())  # closed form 3/4  # doctest: +SKIP
        0.75...
    """
    from pyro_kr.bench.reference.nuts import METHODS

    check_dim("draws", draws, minimum=1)
    check_dim("chains", chains, minimum=1)
    check_dim("tune", tune, minimum=0)
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    min_ess = draws / 4 if min_ess is None else float(min_ess)
    label = name or getattr(model, "__name__", None) or "pyro_model"
    settings = {
        "sampler": "pymc+pyro_potential",
        "method": method,
        "draws": draws,
        "chains": chains,
        "tune": tune,
        "seed": seed,
    }
    if method == "nuts":
        settings["target_accept"] = target_accept

    def build():
        import pyro

        pyro.set_rng_seed(seed)
        potential = PyroPotential(model, args, kwargs, num_chains=chains)
        return _sample_pyro(potential, settings, progressbar)

    return load_or_build(
        name=label,
        digest=_model_digest(model, args, kwargs) if cache else "",
        settings=settings,
        build=build,
        cache=cache,
        cache_dir=cache_dir,
        rhat_max=rhat_max,
        min_ess=min_ess,
    )
