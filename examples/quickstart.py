"""Fit a monotone triangular map to a correlated Gaussian and check it against Cholesky.

For a Gaussian target N(m, S) the Knothe-Rosenblatt map from N(0, I) is x -> m + chol(S) x,
so the fitted map's Jacobian should approach chol(S).

Run: python examples/quickstart.py [--smoke]
"""

from __future__ import annotations

import argparse

import pyro.distributions as dist
import torch

import pyro_kr


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    steps = 60 if args.smoke else args.steps
    torch.manual_seed(0)

    m = torch.tensor([1.0, -2.0, 0.5])
    A = torch.randn(3, 3)
    S = A @ A.T + 0.5 * torch.eye(3)
    target = torch.distributions.MultivariateNormal(m, S)

    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    T = pyro_kr.monotone_triangular_stack(3, depth=2)
    q = dist.TransformedDistribution(base, [T])
    optim = torch.optim.Adam(T.parameters(), lr=1e-2)
    for _ in range(steps):  # minimize the reverse KL(T#N(0,I) || N(m, S)) by sampling
        u = q.rsample((256,))
        loss = (q.log_prob(u) - target.log_prob(u)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()

    with torch.no_grad():
        J = torch.autograd.functional.jacobian(lambda x: T(x), torch.zeros(3))
    error = (J - torch.linalg.cholesky(S)).abs().max().item()
    print(f"KL estimate {loss.item():.4f}; max |DT(0) - chol(S)| = {error:.3f}")
    print("Jacobian at 0 (lower-triangular by construction):\n", J.numpy().round(3))
    return {"kl": loss.item(), "cholesky_error": error}


if __name__ == "__main__":
    main()
