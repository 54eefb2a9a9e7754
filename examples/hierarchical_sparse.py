"""A hierarchy with many groups: the sparse KR map from the model's plate, with subsampling.

``AutoKR(model, structure="plates")`` reads the plate of the local ``theta_j`` from the model
and builds a dense map of the globals ``(mu, tau)`` plus one conditional map shared by the
groups, so a step costs O(groups) instead of O(groups^2). With
``pyro.plate(..., subsample_size=B)`` every step evaluates only ``B`` groups (the ELBO scaled
by ``N / B`` as Pyro does). ``guide.marginal(["mu", "tau"], n)`` draws the exact marginal of the
globals, and ``guide.conditional({"mu": m, "tau": t})`` the groups given them (printed beside
the exact conditional of this conjugate model, at globals the fit covers).

``--decay-from 0.85`` passes ``fit(..., lr_decay_from=0.85)``: Adam holds its lr for 85 % of the
steps before the final decay, which a large hierarchy needs to catch up with the end of the
tempering ramp (docs/hierarchical.md, "The default recipe at N = 1,000"); ``--decay-from
plateau`` starts the decay once the loss stops improving (``lr_decay_from="plateau"``,
docs/hierarchical.md, "An adaptive start").

``--average-from 0.5`` passes ``fit(..., average_from=0.5)``: the uniform (Polyak-Ruppert)
average of the parameters after 50 % of the steps is swapped in at the end, instead of the
last iterate (this example has no annealing schedule, so its lr is constant unless
``--decay-from`` is given; docs/hard_posteriors.md, "Iterate averaging: `average_from`").

Run: python examples/hierarchical_sparse.py [--smoke] [--groups N] [--steps S] [--decay-from F]
[--average-from F]
"""

from __future__ import annotations

import argparse
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


def _decay_from(text: str) -> float | str:
    """``--decay-from``: ``"plateau"`` or a fraction of the steps."""
    return text if text == "plateau" else float(text)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--subsample", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--decay-from", type=_decay_from, default=None,
                        help="fit's lr_decay_from: a fraction such as 0.85, or 'plateau' "
                             "(default: decay after the annealing ramp)")
    parser.add_argument("--average-from", type=float, default=None,
                        help="fit's average_from: average the iterates after this fraction "
                             "of the steps (e.g. 0.5) and keep the average")
    args = parser.parse_args(argv)
    if args.smoke:
        args.groups, args.subsample, args.steps = 50, 10, 20
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    sigma = torch.linspace(0.5, 2.0, args.groups)
    y = 1.0 + torch.randn(args.groups) + sigma * torch.randn(args.groups)

    guide = pyro_kr.AutoKR(model, map="affine", structure="plates")
    start = time.perf_counter()
    pyro_kr.fit(model, guide, y, sigma, args.subsample, steps=args.steps, progress=False,
                 lr_decay_from=args.decay_from, average_from=args.average_from)
    seconds = time.perf_counter() - start
    print(f"{args.steps} steps on {args.subsample} of {args.groups} groups: {seconds:.1f} s")

    globals_ = guide.marginal(["mu", "tau"], 2000)
    print(f"mu  {globals_['mu'].mean():.3f} +- {globals_['mu'].std():.3f}  (data mean 1)")
    print(f"tau {globals_['tau'].median():.3f} (median; simulated with tau = 1)")
    # the groups given the globals, at a value the fit has seen: the median of mu and the 10 %
    # quantile of tau (far outside the fitted marginal a learned map only extrapolates);
    # this model's exact conditional is Gaussian, printed beside it
    mu0, tau0 = float(globals_["mu"].median()), float(globals_["tau"].quantile(0.1))
    given = guide.conditional({"mu": mu0, "tau": tau0}).sample(1000)["theta"]
    prec = 1 / sigma[0] ** 2 + 1 / tau0**2
    exact = (y[0] / sigma[0] ** 2 + mu0 / tau0**2) / prec
    print(f"theta_1 | mu = {mu0:.3f}, tau = {tau0:.3f}: {given[:, 0].mean():.3f} +- "
          f"{given[:, 0].std():.3f}  (exact {exact:.3f} +- {prec.rsqrt():.3f})")
    # joint draws of every site (all groups): the reference draws go through the map in chunks
    # of at most pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES coordinates, so the memory beyond
    # the draws themselves stays bounded however many draws are asked for
    draws = guide.sample_posterior(4000, y, sigma)
    print(f"sample_posterior: theta {tuple(draws['theta'].shape)}, in chunks of "
          f"{pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES} coordinates")
    return {"seconds": seconds, "mu": float(globals_["mu"].mean())}


if __name__ == "__main__":
    main()
