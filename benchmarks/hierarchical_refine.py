"""Hierarchical benchmark: a mass-covering refinement of the sparse AutoKR (Renyi / IWAE).

Same models, data, references and metrics as ``benchmarks/hierarchical.py`` (the centered
normal hierarchy with its exact quadrature reference; the hierarchical logistic regression
with its stored NUTS reference). One run trains ``--steps`` steps in all, ``--particles``
vectorized particles per step, Adam ``--lr``:

* ``--refine 0``: ``Trace_ELBO`` for every step (the table of docs/hierarchical.md);
* ``--refine R --alpha A``: ``Trace_ELBO`` for ``steps - R`` steps, then ``R`` steps of Pyro's
  ``RenyiELBO(alpha=A, num_particles=K)`` (``A = 0``: the importance-weighted bound of
  Burda et al. 2016; ``0 < A < 1``: Renyi's bound of Li and Turner 2016, between it and the
  ELBO); ``--alpha 1`` is the control, the same last ``R`` steps with ``Trace_ELBO``;
  ``--rlr`` gives the last ``R`` steps a fresh Adam with that step size (default: continue
  the same Adam at ``--lr``).
* ``--guide dense_default / sparse_default / iaf_default``: the library's default recipe,
  ``pyro_kr.fit`` with ``TransportELBO(Annealing.over(steps))`` (likelihood tempering, the
  lr held through the ramp and decayed after it), ``order="auto"`` unless ``--kw`` sets
  AutoKR's arguments; ``--guide affine`` (the sparse map with ``map="affine"``), ``iaf``,
  ``autonormal``, ``lowrank``
  (``AutoLowRankMultivariateNormal``) and ``structured`` (``AutoStructured`` with the
  global-local dependencies, as built in benchmarks/hierarchical.py): Pyro's autoguides in the
  ``Trace_ELBO`` loop above. A step whose loss is not finite, or that raises Pyro's
  NaN-parameter error, ends the run with ``failed`` in the row (no metrics).
* ``--guide-kw`` (JSON): AutoKR keyword arguments for ``--guide sparse`` / ``affine`` (e.g.
  ``depth``, ``hidden_dims``, ``num_bumps``, ``init_scale``, ``order``); ``--global-depth K``
  (with ``--global-kw``): the sparse map's globals part rebuilt with ``K`` fresh monotone layers
  (``0``: affine globals), a script-level screen; ``--draw-seeds``: the trained guide also scored
  on draws with these seeds (row ``redraws``, the metric's noise); ``--iaf-order``: ``--guide
  iaf`` with its autoregressive order fixed (``globals_first`` / ``locals_first``) instead of
  Pyro's random permutation (rows of ``--guide iaf`` record the permutation used). All default
  to the behaviour of the stored rows, which they reproduce bit for bit.

Prints one JSON line per training seed (W2 of the globals, sd errors, mean of the scale's
log and, on the normal model, its 1/10/50/90/99 % quantiles, mean local W2, PSIS k-hat on
4,000 draws, CPU seconds per step, and with ``--elbo P`` four ``-ELBO`` estimates of ``P``
particles); ``--output`` appends the rows to a JSON file.
docs/hierarchical.md ("A mass-covering refinement") lists the runs, e.g.

    OMP_NUM_THREADS=1 python benchmarks/hierarchical_refine.py normal 1000 --seeds 0 1 2 \
        --refine 200 --rlr 1e-3 --alpha 0.5
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_refine.py logistic 0 --refine 0
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

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive, ComposeTransformModule
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal, AutoNormalizingFlow
from pyro.nn import AutoRegressiveNN
from pyro.poutine.util import site_is_subsample

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr.diagnostics import psis  # noqa: E402

DEFAULT_RECIPE = ("dense_default", "sparse_default", "iaf_default")


def negelbo(model, guide, args, particles: int, reps: int) -> list[float]:
    """``reps`` estimates of ``-ELBO`` with ``particles`` vectorized particles each."""
    el = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return [float(el.loss(model, guide, *args)) for _ in range(reps)]


def latent_order(model, args, order: str) -> torch.Tensor:
    """A permutation of the flattened latents (the sites in the model's order, as
    ``AutoContinuous`` packs them): ``"globals_first"`` keeps the sites outside every plate
    first, ``"locals_first"`` puts the plated sites first; each site's entries stay together."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args)
    first, last = [], []
    start = 0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        n = site["value"].numel()
        (last if site["cond_indep_stack"] else first).extend(range(start, start + n))
        start += n
    if order == "locals_first":
        first, last = last, first
    return torch.tensor(first + last)


def iaf_with_order(model, args, order: str):
    """``AutoIAFNormal(model)`` with its autoregressive order fixed (Pyro's own draws a random
    permutation of the latents, ``torch.randperm``): the same one-transform IAF, the same
    hidden width ``3 D + 1``, only ``AutoRegressiveNN(permutation=...)`` set."""
    perm = latent_order(model, args, order)

    def transform(dim: int):
        arn = AutoRegressiveNN(dim, [3 * dim + 1], permutation=perm)
        return AffineAutoregressive(arn)

    return AutoNormalizingFlow(model, transform)


def iaf_permutation(guide) -> list[int] | None:
    """The autoregressive order of a trained IAF guide (``None`` for other guides)."""
    for module in guide.modules():
        if isinstance(module, AutoRegressiveNN):
            return module.permutation.tolist()
    return None


def make_guide(name: str, model, guide_kw: dict | None = None):
    """``guide_kw``: AutoKR keyword arguments merged over those of ``sparse`` / ``affine``."""
    kw = guide_kw or {}
    if name == "sparse":
        return pyro_kr.AutoKR(model, **{"structure": "plates", "order": H.MEASURED_ORDER, **kw})
    if name == "affine":  # autokr_sparse_affine of benchmarks/hierarchical.py
        return pyro_kr.AutoKR(model, **{"map": "affine", "structure": "plates",
                                        "order": H.MEASURED_ORDER, **kw})
    if name == "iaf":
        return AutoIAFNormal(model)
    if name == "autonormal":
        return AutoNormal(model)
    if name in ("lowrank", "structured"):  # the builders of benchmarks/hierarchical.py
        key = {"lowrank": "lowrank_mvn", "structured": "structured"}[name]
        return H.make_logistic_guide(key) if model is H.logistic_model else H.make_guide(key)
    raise ValueError(f"guide must be sparse, affine, iaf, autonormal, lowrank or structured here, "
                     f"got {name!r}")


def rebuild_globals(guide, args, depth: int, options: dict) -> None:
    """Replace the monotone layers of a sparse AutoKR's globals map (a script-level screen,
    not an AutoKR option): ``depth`` fresh ``MonotoneTriangular`` layers with ``options``
    (``0``: the globals' map is its triangular affine layer alone); the affine layer and the
    locals' map are kept."""
    guide._setup_prototype(*args)
    smap = guide.transform
    if not hasattr(smap, "global_map"):
        raise ValueError("--global-depth needs the sparse map (structure='plates')")
    affine = smap.global_map[-1]
    dg = smap.global_dim
    layers = [pyro_kr.MonotoneTriangular(dg, **options).to(affine.loc) for _ in range(depth)]
    smap.global_map = ComposeTransformModule([*layers, affine], cache_size=1)


def _step(svi, args, done: int, out: dict):
    """One SVI step; on a non-finite loss or Pyro's NaN-parameter error, records
    ``out["failed"]`` (as benchmarks/hierarchical.py does) and returns ``None``."""
    try:
        loss = svi.step(*args)
    except (ValueError, RuntimeError) as exc:
        out["failed"] = f"step {done + 1}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return None
    if not math.isfinite(loss):
        out["failed"] = f"step {done + 1}: loss {loss}"
        return None
    return loss


def train(a, model, args) -> tuple[object, dict]:
    """Train one guide as ``a`` says; returns ``(guide, row fields)``."""
    out: dict = {}
    if a.guide in DEFAULT_RECIPE:
        if a.guide == "iaf_default":
            guide = AutoIAFNormal(model)
        else:
            kw = {"structure": "plates"} if a.guide == "sparse_default" else {}
            guide = pyro_kr.AutoKR(model, **{**kw, **json.loads(a.kw)})
        loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(a.steps), num_particles=a.particles,
                                     max_plate_nesting=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyro_kr.fit(model, guide, *args, loss=loss, steps=a.steps, progress=False,
                        check=False)
        out["steps_done"] = a.steps
        return guide, out
    if (a.guide_kw != "{}" or a.global_depth is not None) and a.guide not in ("sparse", "affine"):
        raise ValueError("--guide-kw and --global-depth apply to --guide sparse / affine only")
    if a.iaf_order != "random" and a.guide != "iaf":
        raise ValueError("--iaf-order applies to --guide iaf only")
    if a.iaf_order != "random":
        guide = iaf_with_order(model, args, a.iaf_order)
    else:
        guide = make_guide(a.guide, model, json.loads(a.guide_kw))
    if a.global_depth is not None:
        rebuild_globals(guide, args, a.global_depth, json.loads(a.global_kw))
    optim = pyro.optim.Adam({"lr": a.lr})
    base = Trace_ELBO(num_particles=a.particles, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, optim, base)
    done, loss = 0, None
    for _ in range(a.steps - a.refine):
        loss = _step(svi, args, done, out)
        if loss is None:
            break
        done += 1
    if a.refine and "failed" not in out:
        if a.alpha == 1:  # the control: the same last steps with Trace_ELBO
            last = Trace_ELBO(num_particles=a.particles, vectorize_particles=True,
                              max_plate_nesting=1)
        else:
            last = RenyiELBO(alpha=a.alpha, num_particles=a.particles, vectorize_particles=True,
                             max_plate_nesting=1)
        optim2 = optim if a.rlr is None else pyro.optim.Adam({"lr": a.rlr})
        svi2 = pyro.infer.SVI(model, guide, optim2, last)
        for _ in range(a.refine):
            loss = _step(svi2, args, done, out)
            if loss is None:
                break
            done += 1
    out["final_loss"] = loss
    out["steps_done"] = done
    if a.guide == "iaf":
        out["iaf_permutation"] = iaf_permutation(guide)
    return guide, out


def evaluate(a, seed, guide, model, args, data) -> dict:
    """The metrics of benchmarks/hierarchical.py for one trained guide."""
    row: dict = {}
    if a.kind == "normal":
        y, sigma = data
        ref_g, ref_t = H.reference(y, sigma, 4000)
        for draw_seed in a.draw_seeds or []:  # the metric's noise: other draws, same guide
            pyro.set_rng_seed(draw_seed)
            gd, _ = H.draws_of(guide, y, sigma, 4000)
            row.setdefault("redraws", []).append({
                "draw_seed": draw_seed,
                "w2_globals": H.w2_2d(gd[:1000], ref_g[:1000]),
                "sd_err_mu": float(abs(gd[:, 0].std() / ref_g[:, 0].std() - 1)),
                "sd_err_log_tau": float(abs(gd[:, 1].std() / ref_g[:, 1].std() - 1)),
                "mean_log_tau": float(gd[:, 1].mean())})
        pyro.set_rng_seed(seed)
        gd, t = H.draws_of(guide, y, sigma, 4000)
        row["w2_globals"] = H.w2_2d(gd[:1000], ref_g[:1000])
        row["sd_err_mu"] = float(abs(gd[:, 0].std() / ref_g[:, 0].std() - 1))
        row["sd_err_log_tau"] = float(abs(gd[:, 1].std() / ref_g[:, 1].std() - 1))
        row["sd_log_tau"] = float(gd[:, 1].std())
        row["ref_sd_log_tau"] = float(ref_g[:, 1].std())
        row["mean_log_tau"] = float(gd[:, 1].mean())
        row["ref_mean_log_tau"] = float(ref_g[:, 1].mean())
        row["mean_local_w2"] = float(H.w2_1d(t, ref_t).mean())
        qs = [0.01, 0.1, 0.5, 0.9, 0.99]
        row["q_log_tau"] = np.quantile(gd[:, 1], qs).round(3).tolist()
        row["ref_q_log_tau"] = np.quantile(ref_g[:, 1], qs).round(3).tolist()
    else:
        ref_g, ref_l, _ = H.load_logistic_reference()
        (rg, rl), _ = H.logistic_reference_sets(ref_g, ref_l)
        gg, gl = H.logistic_guide_draws(guide, args, 4000, seed)
        row["w2_globals"] = H.w2_2d(gg[:1000], rg[:1000])
        for i, k in enumerate(H.LOGISTIC_GLOBALS):
            row[f"sd_err_{k}"] = float(abs(gg[:, i].std() / rg[:, i].std() - 1))
            row[f"mean_{k}"] = float(gg[:, i].mean())
        row["mean_local_w2"] = float(H.w2_1d(gl[:1000], rl[:1000]).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["khat"] = float(psis(guide, model, *args, num_samples=4000).khat)
    if a.elbo:
        row["negelbo"] = negelbo(model, guide, args, a.elbo, 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["normal", "logistic"])
    p.add_argument("n", type=int, help="groups of the normal model (ignored for logistic)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--refine", type=int, default=0, help="last steps with RenyiELBO")
    p.add_argument("--alpha", type=float, default=0.0, help="Renyi alpha (1: Trace_ELBO)")
    p.add_argument("--rlr", type=float, default=None,
                   help="Adam step size of the last --refine steps (default: --lr, same Adam)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--guide", default="sparse",
                   choices=["sparse", "affine", "iaf", "autonormal", "lowrank", "structured",
                            *DEFAULT_RECIPE])
    p.add_argument("--iaf-order", default="random",
                   choices=["random", "globals_first", "locals_first"],
                   help="--guide iaf: Pyro's random autoregressive order (AutoIAFNormal's "
                        "default) or a fixed one; rows of --guide iaf record the permutation")
    p.add_argument("--elbo", type=int, default=0, help="particles of four -ELBO estimates")
    p.add_argument("--kw", default="{}",
                   help="JSON of AutoKR keyword arguments for the *_default guides, e.g. "
                        "'{\"order\": \"model\"}'")
    p.add_argument("--guide-kw", default="{}",
                   help="JSON of AutoKR keyword arguments for --guide sparse / affine, merged "
                        "over the guide's own (structure, order, map), e.g. '{\"depth\": 3}', "
                        "'{\"hidden_dims\": [64, 64]}', '{\"order\": [\"tau\", \"mu\"]}'")
    p.add_argument("--global-depth", type=int, default=None,
                   help="rebuild the sparse map's globals part with this many fresh monotone "
                        "layers (0: affine globals), the locals' map unchanged (a script-level "
                        "screen, not an AutoKR option)")
    p.add_argument("--global-kw", default="{}",
                   help="JSON of MonotoneTriangular options for --global-depth's layers")
    p.add_argument("--draw-seeds", type=int, nargs="*", default=None,
                   help="normal model: also score the trained guide on draws with these seeds "
                        "(row 'redraws'; the metric's noise), before the usual draws")
    p.add_argument("--output", type=Path, default=None, help="append the rows to this JSON")
    a = p.parse_args()
    if not 0 <= a.refine < a.steps:
        p.error(f"--refine must lie in [0, --steps), got {a.refine}")
    torch.set_num_threads(1)
    for seed in a.seeds:
        row = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
               if k not in ("seeds", "output")}
        row["seed"] = seed
        row["command"] = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
                          + shlex.join(sys.argv))
        if a.kind == "normal":
            y, sigma = H.make_data(a.n)
            model, args, data = H.model, (y, sigma), (y, sigma)
        else:
            g, x, yy = H.logistic_data()
            n = int(g.max()) + 1
            model, data = H.logistic_model, None
            args = (torch.as_tensor(g), torch.as_tensor(x, dtype=torch.float32),
                    torch.as_tensor(yy, dtype=torch.float32), n)
        pyro.clear_param_store()
        torch.manual_seed(seed)
        c0 = time.process_time()
        guide, fields = train(a, model, args)
        row.update(fields)
        row["train_cpu_s"] = time.process_time() - c0
        row["cpu_s_per_step"] = row["train_cpu_s"] / max(row["steps_done"], 1)
        if "failed" not in row:
            e0 = time.process_time()
            row.update(evaluate(a, seed, guide, model, args, data))
            row["eval_cpu_s"] = time.process_time() - e0
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
        if a.output is not None:
            old = json.loads(a.output.read_text()) if a.output.exists() else {"rows": []}
            old["rows"].append(row)
            a.output.parent.mkdir(parents=True, exist_ok=True)
            a.output.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
