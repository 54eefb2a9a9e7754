"""Amortized posteriors: one conditional KR map ``q(u | y)`` for every observation ``y``.

- :class:`AmortizedKR`: the guide (block-triangular map ``T(y, x) = (y, T_U(y, x))``);
- :func:`fit_amortized`: training by reverse KL (amortized ELBO or the per-dataset
  importance-weighted bound, needs the likelihood), forward KL (maximum likelihood on
  simulations, needs only the simulator) or both in turn (``mode="hybrid"``);
- :class:`ImportanceWeightedELBO`: the per-dataset importance-weighted bound;
- :class:`ReweightedWakeLoss`: the wake-phase ``q`` update of reweighted wake-sleep;
- :class:`ForwardAnchoredLoss`: reverse objective plus the forward NLL of the step's pairs;
- :class:`SimulatedForwardLoss`: forward NLL on fresh simulations (reverse mode's warm-up);
- :class:`StandardizedMLP`: the default embedding of the observations;
- :class:`PosteriorSampler`: a detached float32 snapshot for fast serving of draws.
"""

from __future__ import annotations

from pyro_kr.amortized.anchor import ForwardAnchoredLoss
from pyro_kr.amortized.embedding import StandardizedMLP
from pyro_kr.amortized.guide import AmortizedKR
from pyro_kr.amortized.iw_elbo import ImportanceWeightedELBO, ReweightedWakeLoss
from pyro_kr.amortized.sampler import PosteriorSampler
from pyro_kr.amortized.training import AmortizedHistory, fit_amortized
from pyro_kr.amortized.warmup import SimulatedForwardLoss

__all__ = [
    "AmortizedHistory",
    "AmortizedKR",
    "ForwardAnchoredLoss",
    "ImportanceWeightedELBO",
    "PosteriorSampler",
    "ReweightedWakeLoss",
    "SimulatedForwardLoss",
    "StandardizedMLP",
    "fit_amortized",
]
