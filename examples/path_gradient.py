"""The path gradient: ``TransportELBO(gradient="path")`` beside Pyro's reparameterized one.

The same sparse ``AutoKR`` (``structure="plates"``) of a centered hierarchy is trained twice
with the same seed, steps and particles: with Pyro's reparameterized ELBO gradient
(``gradient="reparam"``, what ``Trace_ELBO`` does) and with the path derivative
(``gradient="path"``, "sticking the landing": the score term of the guide's log-density,
zero in expectation, is dropped, so the gradient's noise vanishes as the guide approaches the
posterior). Printed: the guide's sd of ``mu`` and ``log tau`` (20,000 draws) against the exact
sd from a quadrature of the globals' posterior (``theta`` integrated out), and the seconds.
``--subsample B`` trains both with plate subsampling (``B`` groups a step; the path gradient
then adds the groups' share of the globals' score, docs/objective.md); ``--smoke`` runs a tiny
problem with 5 of its 10 groups a step.

Run: python examples/path_gradient.py [--smoke] [--groups N] [--steps S] [--subsample B]
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch

import pyro_kr


def model(y, sigma, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y), subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma[idx]), obs=y[idx])


def exact_sds(y, sigma, grid: int = 300) -> dict[str, float]:
    """Exact posterior sd of ``mu`` and ``log tau``: ``theta`` integrated out in closed form
    (``y_j ~ N(mu, tau^2 + sigma_j^2)``), the rest on a grid over ``(mu, log tau)``."""
    y, sigma = y.double(), sigma.double()
    mu = torch.linspace(float(y.mean()) - 4, float(y.mean()) + 4, grid, dtype=torch.float64)
    lt = torch.linspace(-6.0, 3.0, grid, dtype=torch.float64)
    m, u = torch.meshgrid(mu, lt, indexing="ij")
    var = u.exp()[..., None] ** 2 + sigma**2
    log_p = (
        dist.Normal(0.0, 5.0).log_prob(m) + dist.HalfCauchy(5.0).log_prob(u.exp()) + u
        - 0.5 * ((y - m[..., None]) ** 2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
    )
    w = (log_p - log_p.max()).exp()
    w = w / w.sum()
    out = {}
    for name, values in (("mu", m), ("log_tau", u)):
        mean = (w * values).sum()
        out[name] = float(((w * (values - mean) ** 2).sum()).sqrt())
    return out


def train(y, sigma, gradient: str, steps: int, particles: int,
          subsample: int | None = None) -> tuple[dict, float]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(model, structure="plates")
    loss = pyro_kr.TransportELBO(None, num_particles=particles, gradient=gradient)
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "lrd": 0.01 ** (1 / steps)})
    start = time.perf_counter()
    pyro_kr.fit(model, guide, y, sigma, subsample, loss=loss, optim=optim, steps=steps,
                progress=False)
    seconds = time.perf_counter() - start
    torch.manual_seed(1)
    draws = guide.sample_posterior(20000, y, sigma)
    sds = {"mu": float(draws["mu"].std()), "log_tau": float(draws["tau"].log().std())}
    return sds, seconds


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--subsample", type=int, default=None,
                        help="groups per step (plate subsampling); default: all")
    args = parser.parse_args(argv)
    if args.smoke:
        args.groups, args.steps, args.subsample = 10, 30, 5
    if args.subsample is not None and not 1 <= args.subsample <= args.groups:
        parser.error(f"--subsample must lie in [1, --groups = {args.groups}]")
    g = torch.Generator().manual_seed(0)
    sigma = torch.linspace(0.5, 2.0, args.groups)
    y = 1.0 + torch.randn(args.groups, generator=g) + sigma * torch.randn(args.groups, generator=g)
    exact = exact_sds(y, sigma)
    print(f"exact posterior sd: mu {exact['mu']:.4f}, log tau {exact['log_tau']:.4f}")
    results = {}
    for gradient in ("reparam", "path"):
        sds, seconds = train(y, sigma, gradient, args.steps, args.particles, args.subsample)
        err = {k: sds[k] / exact[k] - 1 for k in sds}
        results[gradient] = {"seconds": seconds, **{f"sd_error_{k}": v for k, v in err.items()}}
        groups = "" if args.subsample is None else f" of {args.subsample}/{args.groups} groups"
        print(f"gradient={gradient!r:10} {args.steps} steps{groups} in {seconds:5.1f} s: "
              f"sd error mu {err['mu']:+.1%}, log tau {err['log_tau']:+.1%}")
    return results


if __name__ == "__main__":
    main()
