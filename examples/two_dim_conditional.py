"""Conditional sampling on a 2-D joint with COT flow matching (Kerrigan et al. 2024, Table 1
datasets).

Trains :class:`pyro_kr.flow_matching.COTFlowMatching` on ``(u, y)`` pairs from one of the 2-D
joint distributions (moons, checkerboard, circles, swissroll), then samples ``u ~ q(u | y)`` for
a few values of ``y`` and compares them with the true conditional (generator draws with ``y``
close to the query). Without ``--smoke`` it saves a figure with the joint and the conditionals.

Usage:
    python examples/two_dim_conditional.py --dataset checkerboard --steps 3000
    python examples/two_dim_conditional.py --smoke
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyro_kr.bench.problems.joint2d import DATASETS
from pyro_kr.flow_matching import COTFlowMatching


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="moons", choices=sorted(DATASETS))
    parser.add_argument("--coupling", default="minibatch",
                        choices=["full", "minibatch", "independent"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--plan-block-size", type=int, default=None,
                        help="--coupling full: one exact plan per random block of this size")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="moving average of the weights, e.g. 0.999")
    parser.add_argument("--out", default="two_dim_conditional.png")
    parser.add_argument("--smoke", action="store_true", help="tiny run, no figure")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.n_train, args.width = 40, 1000, 16
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)

    u, y = DATASETS[args.dataset](args.n_train, seed=0)
    # independent source y (Kerrigan et al. 2024)
    _, y_source = DATASETS[args.dataset](args.n_train, seed=1)
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=args.width, depth=3 if args.smoke else 4)
    history = cot.fit(u=u, y=y, y_source=y_source, steps=args.steps, batch_size=256,
                      coupling=args.coupling, eps=args.eps, sigma=1e-2, lr=1e-3,
                      plan_block_size=args.plan_block_size if args.coupling == "full" else None,
                      ema_decay=args.ema_decay, progress=not args.smoke)
    print(f"trained {args.steps} steps in {history.train_seconds:.1f} s, "
          f"final loss {sum(history.loss[-20:]) / 20:.4f}")

    y_query = torch.quantile(y.squeeze(-1), torch.tensor([0.2, 0.5, 0.8])).unsqueeze(-1)
    # the posterior protocol: sample(y, n) -> {"u": (n, 3, 1)} (sample-based latent site "u")
    num = 200 if args.smoke else 5000
    draws = cot.sample(y_query, num, ode_steps=10 if args.smoke else 50)["u"].squeeze(-1)
    u_test, y_test = DATASETS[args.dataset](50_000, seed=1)
    print(f"{'y':>8} {'mean q':>8} {'mean true':>10} {'sd q':>7} {'sd true':>8}")
    for k, yq in enumerate(y_query.squeeze(-1).tolist()):
        near = u_test[(y_test.squeeze(-1) - yq).abs() < 0.02].squeeze(-1)
        print(f"{yq:8.3f} {float(draws[:, k].mean()):8.3f} {float(near.mean()):10.3f} "
              f"{float(draws[:, k].std()):7.3f} {float(near.std()):8.3f}")

    if args.smoke:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    y_gen = y_test[:5000]
    u_gen = cot.posterior(y_gen, ode_steps=50).sample()
    axes[0].scatter(u_test[:5000, 0], y_test[:5000, 0], s=1, alpha=0.4, label="truth")
    axes[0].scatter(u_gen[:, 0], y_gen[:, 0], s=1, alpha=0.4, label="COT-FM")
    axes[0].set(xlabel="u", ylabel="y", title=f"{args.dataset}: joint")
    axes[0].legend(markerscale=8)
    for k, yq in enumerate(y_query.squeeze(-1).tolist()):
        near = u_test[(y_test.squeeze(-1) - yq).abs() < 0.02].squeeze(-1)
        ax = axes[k + 1]
        ax.hist(near.numpy(), bins=60, density=True, alpha=0.5, label="truth (|y - y0| < 0.02)")
        ax.hist(draws[:, k].numpy(), bins=60, density=True, alpha=0.5, label="q(u | y0)")
        ax.set(title=f"y0 = {yq:.2f}", xlabel="u")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
