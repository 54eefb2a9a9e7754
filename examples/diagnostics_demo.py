"""Check Pyro autoguides against an exact posterior: metrics with noise floors, PSIS, ArviZ.

The model is a 3-parameter Bayesian linear regression with a Gaussian prior and known noise, so
the posterior is Gaussian and exact reference draws are available. Each guide is fitted with
SVI, then compared with the reference (W2, MMD^2, C2ST, moment errors, each with its noise
floor), checked by PSIS (k-hat), converted to ArviZ (``az.summary``, ``az.loo``) and plotted.

Run: python examples/diagnostics_demo.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyro_kr import metrics
from pyro_kr.diagnostics import plots, psis, to_inference_data

NAMES = ["w0", "w1", "w2"]


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(8, 3, generator=g)
    X[:, 2] = X[:, 1] + 0.1 * torch.randn(8, generator=g)  # collinear: correlated posterior
    y = X @ torch.tensor([1.0, -0.5, 0.5]) + 0.5 * torch.randn(8, generator=g)
    return X, y


def model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)  # broadcasts over draws


def exact_posterior(X: torch.Tensor, y: torch.Tensor) -> dist.MultivariateNormal:
    precision = torch.eye(3) + X.T @ X / 0.25
    cov = torch.linalg.inv(precision)
    return dist.MultivariateNormal(cov @ X.T @ y / 0.25, covariance_matrix=cov)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures")
    args = parser.parse_args(argv)
    steps, n = (100, 200) if args.smoke else (args.steps, args.draws)
    keys = ["w2", "mmd2", "mean_error", "sd_error"] + ([] if args.smoke else ["c2st"])
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    scratch = tempfile.TemporaryDirectory() if args.smoke and args.out is None else None
    out = args.out or Path(scratch.name if scratch else tempfile.mkdtemp(prefix="pyro_kr_demo_"))
    X, y = make_data()
    reference = exact_posterior(X, y).sample((2 * n,))  # two halves: comparison and floor

    results, samples, losses = {}, {}, {}
    for name, make in (("AutoNormal", AutoNormal), ("AutoMultivariateNormal",
                                                     AutoMultivariateNormal)):
        pyro.clear_param_store()
        guide = make(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
        losses[name] = [svi.step(X, y) for _ in range(steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ FutureWarnings, LOO k-hat notes
            idata = to_inference_data(guide, model, X, y, num_samples=n)
            import arviz as az

            loo = az.loo(idata)
        draws = torch.as_tensor(idata.posterior["w"].values[0])
        samples[name] = draws
        scores = metrics.compare(draws, reference, metrics=keys, n=n)
        scores["khat"] = psis(guide, model, X, y, num_samples=n).khat
        scores["elpd_loo"] = float(loo.elpd_loo)
        results[name] = scores

    print(f"{'method':<24}" + "".join(f"{k:>18}" for k in keys) + f"{'k-hat':>8}")
    for name, scores in results.items():
        cells = "".join(f"{scores[k]:>9.4f} ({scores[k + '_noise_floor']:.4f})" for k in keys)
        print(f"{name:<24}{cells}{scores['khat']:>8.2f}")
    print("(noise floor in parentheses: the metric between two halves of the exact draws)")

    plots.pair_plot(samples["AutoNormal"], reference, label="AutoNormal", names=NAMES,
                    path=out / "pair.png")
    plots.marginal_plot(samples, reference=reference, names=NAMES, path=out / "marginals.png")
    plots.loss_plot(losses, path=out / "loss.png")
    plots.metrics_plot(results, metrics=keys, path=out / "metrics.png")
    print(f"figures written to {out}" + (" (a scratch folder, removed now)" if scratch else ""))
    if scratch is not None:
        scratch.cleanup()
    return results


if __name__ == "__main__":
    main()
