"""Hierarchical benchmark: the library's default recipe on the centered normal hierarchy, traced.

Same model, data and exact quadrature reference as ``benchmarks/hierarchical.py``. One run fits
``AutoKR(model, structure=..., order=...)`` (defaults otherwise) with ``pyro_kr.fit`` and
``TransportELBO(Annealing.over(steps, fraction=..., beta=..., lam=...), num_particles=K)``
(the default recipe: likelihood tempering ``beta`` 1e-2 -> 1 and the ``(eps, lam)`` ramp over
70 % of the steps, then ``fit``'s lr decay to 1 %), changing one thing at a time:

* ``--steps``, ``--particles``, ``--order``, ``--structure``, ``--fraction`` (the ramp);
* ``--beta0 1``: no tempering; ``--beta-frac F`` / ``--beta-kind linear``: the ``beta`` ramp
  over ``F`` of the steps (geometric) or linear, ``(eps, lam)`` and the decay unchanged;
* ``--lam-inf``: no transport cost (``lam = inf``), tempering kept;
* ``--no-decay``: a constant lr; ``--decay-from F``: ``fit(..., lr_decay_from=F)``, Adam's lr
  held until ``F`` of the steps (not the ramp's end), then decayed geometrically to 1 % by the
  last step (``--decay-from 0.7`` reproduces the default bit for bit). Rows before 2026-12-05
  16:00 UTC wrote the same lr out in a callback (a rerun with the knob reproduces them).
  ``--decay-from plateau``: ``fit(..., lr_decay_from="plateau")``, the decay from where the
  loss stopped improving after the ramp (at the latest 85 %); rows since 2026-12-05 17:00 UTC
  record the step the decay started (``lr_decay_start``).
* ``--average-from F``: ``fit(..., average_from=F)``, the uniform average of the iterates after
  ``F`` of the steps swapped in at the end (with ``--no-decay``: in place of the lr decay);
  rows since 2026-12-05 19:30 UTC record ``average_starts`` / ``averaged_steps``.

Every ``--every`` steps (and at step 1) it records ``beta``, ``lam``, ``eps``, the ELBO,
``cost / lam`` and the mean / sd of ``log tau`` (and the mean of ``mu``) of 1,000 guide draws
(drawn under ``fork_rng``: the training stream is untouched). At the end: W2 of ``(mu, log tau)``
against the exact reference (1,000 draws each), mean / sd of ``log tau`` and ``mu``, the mean
local W2, and with ``--khat`` PSIS k-hat. Appends one row (with its command) to ``--output``.
docs/hierarchical.md ("The default recipe at N = 1,000") lists the runs, e.g.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical_recipe.py 1000 0 --tag default
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical_recipe.py 1000 0 --decay-from 0.85
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical_recipe.py 1000 0 --no-decay \
        --average-from 0.85
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr.diagnostics import psis  # noqa: E402
from pyro_kr.objective.schedules import GeometricSchedule, LinearSchedule  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hierarchical_recipe.json"

p = argparse.ArgumentParser()
p.add_argument("n", type=int)
p.add_argument("seed", type=int)
p.add_argument("--steps", type=int, default=600)
p.add_argument("--particles", type=int, default=8)
p.add_argument("--fraction", type=float, default=0.7)
p.add_argument("--beta0", type=float, default=1e-2)
p.add_argument("--no-decay", action="store_true")
p.add_argument("--order", default="auto")
p.add_argument("--lam-inf", action="store_true")
p.add_argument("--lam-end", type=float, default=1e4)
p.add_argument("--structure", default="plates")
p.add_argument("--every", type=int, default=50)
p.add_argument("--tag", default="")
p.add_argument("--khat", action="store_true")
p.add_argument("--beta-frac", type=float, default=None,
               help="beta ramp over this fraction of steps")
p.add_argument("--beta-kind", default="geometric")
p.add_argument("--output", type=Path, default=RESULTS)
p.add_argument("--decay-from", type=lambda v: v if v == "plateau" else float(v), default=None,
               help="fit(lr_decay_from=F): lr held until this fraction of steps, then decayed "
                    "to 1 %%; 'plateau': from where the loss stopped improving after the ramp")
p.add_argument("--average-from", type=lambda v: float(v) if "." in v else int(v), default=None,
               help="fit(average_from=F): the average of the iterates after this fraction of "
                    "the steps (a float) or this step (an int) swapped in at the end")
a = p.parse_args()
torch.set_num_threads(1)

y, sigma = H.make_data(a.n)
ref_g, ref_t = H.reference(y, sigma, 4000)
pyro.clear_param_store()
torch.manual_seed(a.seed)
guide = pyro_kr.AutoKR(H.model, structure=a.structure, order=a.order)
beta = 1.0 if a.beta0 >= 1 else (a.beta0, 1.0)
lam = math.inf if a.lam_inf else (1.0, a.lam_end)
if a.beta_frac is not None or a.beta_kind != "geometric":
    kind = {"geometric": GeometricSchedule, "linear": LinearSchedule}[a.beta_kind]
    bsteps = int((a.beta_frac if a.beta_frac is not None else a.fraction) * a.steps)
    beta = kind(a.beta0, 1.0, bsteps)
sched = pyro_kr.Annealing.over(a.steps, fraction=a.fraction, beta=beta, lam=lam)
loss = pyro_kr.TransportELBO(sched, num_particles=a.particles, max_plate_nesting=1)
trace = []


def snap(step):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        gd, _ = H.draws_of(guide, y, sigma, 1000)
    return gd


def cb(step, rec):
    if (step + 1) % a.every == 0 or step == 0:
        gd = snap(step)
        trace.append({
            "step": step + 1, "beta": round(rec.get("beta", 1.0), 4), "lam": rec.get("lam"),
            "eps": rec.get("eps"), "elbo": round(rec["elbo"], 2),
            "cost_over_lam": (rec["cost"] / rec["lam"]
                              if math.isfinite(rec.get("lam", math.inf)) else 0.0),
            "mu": round(float(gd[:, 0].mean()), 4), "mean_lt": round(float(gd[:, 1].mean()), 4),
            "sd_lt": round(float(gd[:, 1].std()), 4)})
    return False


c0 = time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    history = pyro_kr.fit(H.model, guide, y, sigma, loss=loss, steps=a.steps, progress=False,
                          check=False, lr_decay=False if a.no_decay else None,
                          lr_decay_from=a.decay_from, callback=cb,
                          average_from=a.average_from)
cpu = time.process_time() - c0
pyro.set_rng_seed(a.seed)
gd, t = H.draws_of(guide, y, sigma, 4000)
row = {"tag": a.tag, **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                        if k != "output"},
       "command": (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
                   + shlex.join(sys.argv)),
       "order_used": list(guide.order),
       "train_cpu_s": round(cpu, 1), "lr_decay_start": history.lr_decay_start,
       **({"average_starts": history.average_starts, "averaged_steps": history.averaged_steps}
          if a.average_from is not None else {}),
       "w2_globals": round(H.w2_2d(gd[:1000], ref_g[:1000]), 4),
       "mean_lt": round(float(gd[:, 1].mean()), 4), "sd_lt": round(float(gd[:, 1].std()), 4),
       "ref_mean_lt": round(float(ref_g[:, 1].mean()), 4),
       "ref_sd_lt": round(float(ref_g[:, 1].std()), 4),
       "mean_mu": round(float(gd[:, 0].mean()), 4), "sd_mu": round(float(gd[:, 0].std()), 4),
       "ref_mean_mu": round(float(ref_g[:, 0].mean()), 4),
       "ref_sd_mu": round(float(ref_g[:, 0].std()), 4),
       "mean_local_w2": round(float(H.w2_1d(t, ref_t).mean()), 4),
       "trace": trace}
if a.khat:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["khat"] = float(psis(guide, H.model, y, sigma, num_samples=4000).khat)
print(json.dumps(row), flush=True)
old = json.loads(a.output.read_text()) if a.output.exists() else {"rows": []}
old["rows"].append(row)
a.output.parent.mkdir(parents=True, exist_ok=True)
a.output.write_text(json.dumps(old, indent=1))
