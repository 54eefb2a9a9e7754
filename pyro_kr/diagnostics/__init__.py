"""Diagnostics of fitted guides: ArviZ conversion, PSIS, and comparison plots.

- :func:`to_inference_data`: draws of any Pyro guide as an ArviZ ``InferenceData`` (posterior,
  importance log weights, pointwise log likelihood, observed data, posterior predictive).
- :func:`psis`: Pareto-smoothed importance sampling (k-hat, ESS, reweighted draws).
- :func:`check_fit`: did a fitted guide stall at the prior, collapse or diverge (``pyro_kr.fit``
  runs it after training and warns with a :class:`FitWarning`)?
- :mod:`pyro_kr.diagnostics.plots`: pair plots, marginals, loss traces, metric bar charts.
- :func:`sbc` and :func:`coverage`: calibration of amortized guides (simulation-based
  calibration ranks with a uniformity test; expected coverage of credible regions), plotted by
  :func:`sbc_plot` and :func:`coverage_plot`.

ArviZ and matplotlib are imported only when these functions run (every ArviZ call lives in
``pyro_kr/diagnostics/_arviz.py``).

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer.autoguide import AutoNormal
    >>> def model():
    ...     pyro.sample("z", dist.Normal(0.0, 1.0))
    >>> pyro.clear_param_store()
    >>> psis(AutoNormal(model, init_scale=1.0), model, num_samples=500).diagnosis  # q = p
    'good'
    >>> pyro.clear_param_store()  # autoguide parameters live in the global param store
    >>> psis(AutoNormal(model, init_scale=0.1), model, num_samples=500).diagnosis  # too narrow
    'unreliable'
"""

from __future__ import annotations

from pyro_kr.diagnostics import plots
from pyro_kr.diagnostics._draws import GuideDraws, draw_guide
from pyro_kr.diagnostics.calibration import CoverageResult, SBCResult, coverage, sbc
from pyro_kr.diagnostics.calibration_plots import coverage_plot, sbc_plot
from pyro_kr.diagnostics.inference_data import to_inference_data
from pyro_kr.diagnostics.psis import KHAT_GOOD, KHAT_OK, PSISResult, psis
from pyro_kr.diagnostics.stall import FitCheck, FitWarning, check_fit

__all__ = [
    "KHAT_GOOD",
    "KHAT_OK",
    "CoverageResult",
    "FitCheck",
    "FitWarning",
    "GuideDraws",
    "PSISResult",
    "SBCResult",
    "check_fit",
    "coverage",
    "coverage_plot",
    "draw_guide",
    "plots",
    "psis",
    "sbc",
    "sbc_plot",
    "to_inference_data",
]
