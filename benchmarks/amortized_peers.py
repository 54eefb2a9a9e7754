"""Amortized posteriors side by side with sbi on Lotka-Volterra (issue 12).

For each simulation budget and seed, one bank of prior-predictive simulations ``(u, y)`` is
drawn and given to every simulation-based method:

* ``forward``: :class:`pyro_kr.AmortizedKR` trained by maximum likelihood on the bank;
* ``hybrid``: the same, then refined by reverse KL with the likelihood (``mode="hybrid"``);
* ``hybrid_iwae``: the same refinement with ``objective="iwae"`` (8 draws of ``u`` per dataset,
  ``batch / 8`` datasets per step: the same number of model evaluations);
* ``hybrid_rws``: the same refinement with ``objective="rws"`` (8 draws, ``batch / 8``
  datasets) plus the forward anchor ``forward_weight=--hybrid-forward-weight`` (default 1);
  ``--hybrid-trace-at`` also scores it at those reverse steps (their CPU is not counted);
* ``cot``: :class:`pyro_kr.COTFlowMatching` on the bank (sample mode, ``log u`` and ``log y``);
  by default a COT plan (full up to ``--cot-full-max``, minibatch above) and ``--epochs``
  steps; with ``--cot-defaults`` ``fit``'s own defaults (independent coupling, i.e.
  conditional flow matching, 20,000 steps, cosine decay), validated on held-out pairs;
* ``npe_maf`` / ``npe_nsf``: sbi's ``NPE`` with its default estimator (MAF in sbi 0.27) and
  with NSF, sbi's documented API and training defaults, given ``theta = log u`` (prior
  ``N(m, 0.5 I)``, the model's prior in those coordinates) and ``x = log y``, as is standard.

``reverse`` (:class:`AmortizedKR` by reverse KL) uses no bank: it simulates a fresh batch of
``y`` every step and evaluates the likelihood; it is trained once per seed and its row reports
the number of model evaluations instead of a budget (``hybrid`` reports both).

Every method is scored on the benchmark observation against the shipped PyMC reference with
the same metric: W2 (POT ``emd2``, squared Euclidean cost) between ``--n-test`` posterior draws
and reference draws, over ``--test-sets`` reference subsets, in raw ``u`` and in ``log u``
divided by the prior sd (0.7071), each with its noise floor (reference vs reference, same
``n``), and by the unbiased MMD² with the unit kernel ``exp(-|a - b|²)`` in raw ``u`` (with its
floor). Kerrigan et al. 2024 does not say in which coordinates its W2 is computed nor which MMD
kernel it uses; its 0.0402 and 0.95e-3 are quoted only with that caveat. With
``--test-observations DIR`` every method is also scored, with the same metrics and draw seeds,
on held-out prior-predictive observations with NUTS references
(``benchmarks/lv_test_observations.py`` builds them): one observation can rank methods by its
own luck. Results go to
``benchmarks/results/amortized_peers.json``, a table is printed and W2 against budget (log
axes) is plotted into ``bench-out/amortized_peers/`` (and ``--figure``, for the docs).

The paper budget, 10,000 training + 10,000 validation simulations, is ``--budgets 20000
--validation-fraction 0.5``; sbi's NPE keeps its default split (10% validation) of the same
20,000 simulations.

Usage:
    python benchmarks/amortized_peers.py --budgets 1000 3000 --seeds 0
    python benchmarks/amortized_peers.py            # 1k..100k x 3 seeds (many hours on 2 cores)
    python benchmarks/amortized_peers.py --smoke    # seconds (CI); skips sbi if not installed
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr._atomic import atomic_path
from pyro_kr.diagnostics import coverage, sbc
from pyro_kr.metrics import mmd2, w2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "amortized_peers.json"
PLOTS = ROOT / "bench-out" / "amortized_peers"
METHODS = ("forward", "hybrid", "hybrid_iwae", "hybrid_rws", "reverse", "cot", "npe_maf",
           "npe_nsf")
PRIOR_LOC = (-0.125, -3.0, -0.125, -3.0)
PRIOR_SD = math.sqrt(0.5)
PAPER_W2 = 0.0402  # Kerrigan et al. 2024, Table 2, COT-FM; coordinates not stated
PAPER_MMD = 0.95e-3  # Kerrigan et al. 2024's best MMD on Lotka-Volterra; kernel not stated
UNIT_KERNEL_H = 2.0**-0.5  # k(a, b) = exp(-|a - b|^2), PCP-Map code's convention (raw u)
KR_METHODS = ("forward", "hybrid", "hybrid_iwae", "hybrid_rws", "reverse")
COLORS = {"forward": "tab:orange", "hybrid": "tab:green", "hybrid_iwae": "tab:olive",
          "cot": "tab:blue", "npe_maf": "tab:purple", "npe_nsf": "tab:brown"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def git_commit() -> str | None:
    """The repository's HEAD commit (``+dirty`` when the library or this script has local
    edits), or ``None`` outside a git checkout: which code (and defaults) a run used."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pyro_kr",
                                "benchmarks/amortized_peers.py"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def import_sbi():
    """``sbi`` (the ``peers`` extra), or ``None`` when it is not installed."""
    try:
        return importlib.import_module("sbi")
    except ImportError:
        return None


def summary(values: list[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


class Scorer:
    """W2 (raw and scaled log ``u``) and unit-kernel MMD² (raw ``u``) of draws ``(n, 4)``
    against fixed reference subsets, each with its floor (reference vs reference)."""

    KEYS = ("raw", "scaled_log", "mmd2_unit")

    def __init__(self, problem, n_test: int, test_sets: int, cache: Path | None = None,
                 reference: dict | None = None, tag: str = "") -> None:
        """``reference``: ``{name: draws (n,)}`` of another observation (default: the shipped
        reference of the benchmark observation); ``tag`` names its floor's cache file."""
        names = problem.param_names
        ref = problem.reference(0) if reference is None else reference
        self.ref = torch.stack([torch.as_tensor(ref[k]).reshape(-1) for k in names], -1).double()
        self.n = min(n_test, self.ref.shape[0] // 2)
        gen = torch.Generator().manual_seed(0)
        perms = [torch.randperm(self.ref.shape[0], generator=gen) for _ in range(test_sets)]
        self.subsets = [(p[: self.n], p[self.n : 2 * self.n]) for p in perms]
        path = None if cache is None else cache / f"floor{tag}_n{self.n}_sets{test_sets}.json"
        if path is not None and path.exists():  # deterministic: the same subsets every run
            self.floor = json.loads(path.read_text())
            return
        floors = [self._both(self.ref[b], self.ref[a]) for a, b in self.subsets]
        self.floor = {key: summary([f[key] for f in floors]) for key in self.KEYS}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(self.floor))

    @staticmethod
    def _scaled_log(u: torch.Tensor) -> torch.Tensor:
        return u.log() / PRIOR_SD

    def _both(self, q: torch.Tensor, r: torch.Tensor) -> dict[str, float]:
        return {"raw": w2(q, r), "scaled_log": w2(self._scaled_log(q), self._scaled_log(r)),
                "mmd2_unit": mmd2(q, r, bandwidth=UNIT_KERNEL_H)}

    def score(self, draw, marginals: bool = False) -> dict:
        """``draw(n, seed) -> (n, 4)`` positive ``u``; one fresh draw per reference subset.

        ``marginals``: also each parameter's location and scale error (``"marginals"``, from
        the same draws; no extra draws, the metrics unchanged)."""
        values, draws = [], []
        for k, (a, _) in enumerate(self.subsets):
            q = draw(self.n, 300 + k).double()
            if not bool(torch.isfinite(q).all()) or not bool((q > 0).all()):
                raise ValueError("the method returned non-finite or non-positive draws")
            values.append(self._both(q, self.ref[a]))
            draws.append(q)
        out = {key: summary([v[key] for v in values]) for key in self.KEYS}
        if marginals:
            out["marginals"] = self.marginals(draws)
        return out

    def marginals(self, draws: list[torch.Tensor]) -> dict:
        """Per parameter, pooled over the test sets' draws against the whole reference: the
        mean error in reference sds, ``(mean_q - mean_ref) / sd_ref``, and the sd ratio
        ``sd_q / sd_ref``, in raw ``u`` and in ``log u``."""
        q = torch.cat(draws)
        out = {}
        for coords, f in (("raw", lambda t: t), ("log", torch.log)):
            a, r = f(q), f(self.ref)
            out[coords] = {
                "mean_error_in_ref_sd": ((a.mean(0) - r.mean(0)) / r.std(0)).tolist(),
                "sd_ratio": (a.std(0) / r.std(0)).tolist(),
                "ref_mean": r.mean(0).tolist(), "ref_sd": r.std(0).tolist()}
        return out


def make_guide(problem, args) -> pyro_kr.AmortizedKR:
    extra = {}  # --embedding-hidden: passed only when given (the guide's default otherwise)
    if getattr(args, "embedding_hidden", None) is not None:
        extra["embedding_hidden"] = tuple(args.embedding_hidden)
    if getattr(args, "library_guide", False):  # AmortizedKR's own defaults, nothing passed
        guide = pyro_kr.AmortizedKR(problem.model, observed="y", **extra)
    else:
        guide = pyro_kr.AmortizedKR(problem.model, observed="y", depth=args.depth,
                                    embedding_dim=args.embedding_dim,
                                    hidden_dims=tuple(args.hidden), **extra)
    if getattr(args, "kr_dtype", "float64") != "float64":  # the model's own dtype otherwise
        guide.setup()  # build the networks, then cast them before the param store sees them
        guide.nets.to(getattr(torch, args.kr_dtype))
    return guide


def kr_draws(guide, names):
    """``y -> draw``: the guide's posterior draws at any observation ``y``."""
    return lambda y_obs: kr_draw(guide, y_obs, names)


def kr_draw(guide, y_obs, names):
    def draw(n: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        values = guide.sample(y_obs, n)
        return torch.stack([values[k].reshape(n) for k in names], -1)

    return draw


def train_kr(problem, mode: str, bank, budget: int, args, seed: int) -> tuple:
    pyro.clear_param_store()
    init_seed = seed if getattr(args, "init_seed", None) is None else args.init_seed
    pyro.set_rng_seed(init_seed)
    guide = make_guide(problem, args)
    stream_seed = getattr(args, "stream_seed", None)
    if stream_seed is not None:  # networks from init_seed, then the training stream reseeded
        guide.setup()  # idempotent: fit_amortized's own setup() call then builds nothing
        pyro.set_rng_seed(stream_seed)
    steps = forward_steps(budget, args) if mode != "reverse" else args.reverse_steps
    optim = pyro.optim.ClippedAdam({"lr": args.lr_forward if mode != "reverse" else
                                    args.lr_reverse, "lrd": 0.1 ** (1 / steps),
                                    "clip_norm": 10.0})
    kwargs = dict(mode=mode, steps=steps, optim=optim, progress=args.progress,
                  objective=args.objective, num_particles=args.num_particles)
    if mode == "reverse":
        kwargs.update(batch_size=args.batch_reverse)
    elif args.forward_defaults:  # fit_amortized's forward defaults; only the batch size is ours
        del kwargs["steps"], kwargs["optim"]
        kwargs.update(batch_size=args.batch_forward, simulations=bank,
                      validation_fraction=args.validation_fraction,
                      **keyword_options(args.forward_option))
    else:
        kwargs.update(batch_size=args.batch_forward, simulations=bank,
                      validate_every=args.validate_every, patience=args.patience,
                      validation_fraction=args.validation_fraction)
    if mode == "hybrid":
        kwargs.update(reverse_steps=args.hybrid_reverse_steps, reverse_lr=args.lr_reverse)
    if getattr(args, "average_from", None) is not None:  # the forward phase needs steps=
        kwargs.update(average_from=args.average_from)
    t0 = time.perf_counter()
    history = pyro_kr.fit_amortized(problem.model, guide, **kwargs)
    facts = {"train_seconds": time.perf_counter() - t0, "steps": history.steps,
             "best_step": history.best_step, "simulations": history.simulations,
             "model_evaluations": history.model_evaluations,
             "forward_steps": history.forward_steps,
             "lr_cuts": getattr(history, "lr_cuts", None),
             "patience_checks": getattr(history, "patience_checks", None),
             "stop_after_cuts": getattr(history, "stop_after_cuts", None),
             "forward_defaults": bool(args.forward_defaults and mode != "reverse"),
             **({"average_from": args.average_from, "averaged_steps": history.averaged_steps,
                 "average_val_loss": history.average_val_loss}
                if getattr(args, "average_from", None) is not None else {}),
             **({"kr_dtype": args.kr_dtype} if args.kr_dtype != "float64" else {}),
             **({"library_guide": True} if getattr(args, "library_guide", False) else {}),
             **seed_facts(args, seed)}
    if mode != "reverse":
        facts.update(split(budget, args.validation_fraction), stopped_early=history.stopped_early,
                     val_step=history.val_step, val_loss=history.val_loss)
    return kr_draws(guide, problem.param_names), facts, guide


def seed_facts(args, seed: int) -> dict:
    """The bank/init/stream seeds of a row, recorded only when --bank-seed, --init-seed or
    --stream-seed is given (rows of runs without them are unchanged)."""
    given = {k: getattr(args, k, None) for k in ("bank_seed", "init_seed", "stream_seed")}
    if all(v is None for v in given.values()):
        return {}
    return {"bank_seed": bank_seed(args, seed),
            "init_seed": seed if given["init_seed"] is None else given["init_seed"],
            "stream_seed": given["stream_seed"]}


def bank_seed(args, seed: int) -> int:
    """Seed of the simulation bank: ``10_000 + seed`` unless ``--bank-seed`` is given."""
    return 10_000 + seed if getattr(args, "bank_seed", None) is None else args.bank_seed


def keyword_options(options: list[str] | None, flag: str = "--forward-option") -> dict:
    """``flag NAME=VALUE`` (repeated) -> extra ``fit_amortized`` keywords (JSON values)."""
    out = {}
    for option in options or []:
        name, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"{flag} takes NAME=VALUE, got {option!r}")
        out[name] = json.loads(value)
    return out


def split(budget: int, fraction: float) -> dict:
    """Training/validation simulations of our modes (``fit_amortized``'s rounding)."""
    n_val = max(1, int(round(fraction * budget)))
    return {"train_simulations": budget - n_val, "validation_simulations": n_val}


def refine_kr(problem, guide, forward_facts: dict, args, objective: str = "elbo",
              forward_weight: float = 0.0, scorer=None, lr: float | None = None) -> tuple:
    """The reverse phase of ``mode="hybrid"``, run on the trained ``forward`` guide.

    ``fit_amortized(mode="hybrid")`` is its forward phase followed by exactly this phase (the
    defaults of its docstring: ``ClippedAdam`` from ``reverse_lr`` decaying 10x, ``eps``
    1e-2 -> 1e-3 and ``lam`` 1e2 -> 1e4 ramped by ``Annealing.over(steps)``). The forward
    phase is seeded and identical to the ``forward`` row's, so continuing that guide saves
    retraining it; only the random stream of the reverse phase differs from a single
    ``mode="hybrid"`` call. ``scorer``: score the guide at the reverse steps
    ``--hybrid-trace-at`` (fixed seeds, the RNG state restored; their CPU is not counted).
    """
    steps = args.hybrid_reverse_steps
    lr = args.lr_reverse if lr is None else lr
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    schedule = pyro_kr.Annealing.over(steps, eps=(1e-2, 1e-3), lam=(1e2, 1e4), beta=1.0)
    pyro.set_rng_seed(forward_facts["seed"] + 7_919)
    particles = 8 if objective in ("iwae", "rws") else 1
    trace, trace_cpu = [], [0.0]
    trace_at = set(getattr(args, "hybrid_trace_at", None) or []) if scorer is not None else set()

    def callback(step: int, record: dict) -> None:
        if step + 1 not in trace_at:
            return
        cpu, state = time.process_time(), torch.get_rng_state()
        score = scorer.score(kr_draw(guide, problem.observation(0), problem.param_names))
        torch.set_rng_state(state)
        trace.append({"reverse_step": step + 1, **{
            k: score[k]["mean"] for k in ("raw", "scaled_log", "mmd2_unit")}})
        log(f"  reverse step {step + 1}: W2 raw {score['raw']['mean']:.4f}, scaled log "
            f"{score['scaled_log']['mean']:.4f}, MMD2 {score['mmd2_unit']['mean']:.2e}")
        trace_cpu[0] += time.process_time() - cpu

    t0 = time.perf_counter()
    history = pyro_kr.fit_amortized(problem.model, guide, mode="reverse", steps=steps,
                                    optim=optim, schedule=schedule,
                                    batch_size=max(1, args.batch_forward // particles),
                                    progress=args.progress, objective=objective,
                                    num_particles=particles, forward_weight=forward_weight,
                                    callback=callback if trace_at else None,
                                    average_from=getattr(args, "average_from", None))
    facts = {k: forward_facts[k] for k in ("best_step", "train_simulations", "stopped_early",
                                           "validation_simulations") if k in forward_facts}
    facts.update({
        "train_seconds": forward_facts["train_seconds"] + time.perf_counter() - t0,
        "reverse_seconds": time.perf_counter() - t0,
        "steps": forward_facts["steps"] + history.steps,
        "forward_steps": forward_facts["steps"],
        "simulations": forward_facts["simulations"] + history.simulations,
        "model_evaluations": history.model_evaluations, "continued_forward_row": True,
        "forward_cpu_seconds": forward_facts["train_cpu_seconds"],
        "objective": objective, "forward_weight": forward_weight,
        "reverse_batch_size": max(1, args.batch_forward // particles),
        "num_particles": particles, "reverse_lr": lr})
    if getattr(args, "average_from", None) is not None:  # the forward row's, then this phase's
        facts.update(average_from=args.average_from,
                     averaged_steps=forward_facts.get("averaged_steps", []) +
                     history.averaged_steps,
                     average_val_loss=forward_facts.get("average_val_loss"))
    if trace_at:
        facts.update(trace=trace, trace_cpu_seconds=trace_cpu[0])
    return kr_draws(guide, problem.param_names), facts, guide


def calibration(problem, guide, args) -> dict:
    """SBC (``--sbc-datasets`` datasets, 100 draws) and coverage (500 draws) of a KR guide, of
    COT-FM (``peer_posteriors.CotPosterior``) or of sbi's posterior (``SbiPosterior``), on the
    same datasets for every row."""
    t0 = time.perf_counter()
    s = sbc(guide, problem.model, num_datasets=args.sbc_datasets, num_draws=100, seed=1)
    c = coverage(guide, problem.model, num_datasets=args.sbc_datasets, num_draws=500, seed=2)
    levels = [round(float(a), 2) for a in c.levels]
    joint = {f"{a:.2f}": float(v) for a, v in zip(levels, c.joint, strict=True)
             if a in (0.5, 0.9, 0.95)}
    return {"num_datasets": args.sbc_datasets, "names": list(s.names),
            "p_values": [float(p) for p in s.p_values], "rejected_at_1pct": s.rejected,
            "joint_coverage": joint,
            "marginal_coverage_0.9": [float(v) for v in c.marginal[levels.index(0.9)]],
            "seconds": time.perf_counter() - t0}


def forward_steps(budget: int, args) -> int:
    """Forward-phase steps: ``--epochs`` passes over the bank, within the step bounds."""
    steps = math.ceil(args.epochs * budget / args.batch_forward)
    return int(min(max(steps, args.min_steps), args.max_steps))


def train_cot(problem, bank, budget: int, args, seed: int) -> tuple:
    names = problem.param_names
    log_u = torch.stack([bank[k] for k in names], -1).log()
    y = bank["y"].reshape(budget, -1)
    pyro.set_rng_seed(seed)
    cot = pyro_kr.COTFlowMatching(dim_u=log_u.shape[1], dim_y=y.shape[1], transform_y=torch.log,
                                  width=args.cot_width, depth=args.cot_depth)
    t0 = time.perf_counter()
    if args.cot_defaults:  # fit's own coupling, steps, lr and schedule; a capped validation set
        n_val = min(max(1, round(args.validation_fraction * budget)), args.cot_validation_max)
        history = cot.fit(log_u, y, batch_size=args.batch_forward, validation=n_val,
                          progress=args.progress, seed=seed)
        steps = len(history.loss)
        extra = {"cot_defaults": True, "validation_pairs": n_val, "best_step": history.best_step}
    else:
        steps = forward_steps(budget, args)
        cot.fit(log_u, y, steps=steps, batch_size=args.batch_forward,
                coupling="full" if budget <= args.cot_full_max else "minibatch",
                validation=0.1, validate_every=max(1, steps // 10), progress=args.progress,
                seed=seed)
        extra = {}
    facts = {"train_seconds": time.perf_counter() - t0, "steps": steps, "simulations": budget,
             **extra}

    def draw_at(y_obs: torch.Tensor):
        post = cot.posterior(y_obs.reshape(-1))  # transform_y applies the log

        def draw(n: int, s: int) -> torch.Tensor:
            torch.manual_seed(s)
            return post.sample((n,)).exp()

        return draw

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_posteriors import CotPosterior  # for SBC / coverage (--sbc-datasets)

    return draw_at, facts, CotPosterior(cot, names, problem.obs_name, bank["y"].shape[1:])


def train_npe(sbi, problem, bank, budget: int, estimator: str, args, seed: int) -> tuple:
    from sbi.inference import NPE

    names = problem.param_names
    theta = torch.stack([bank[k] for k in names], -1).log().float()
    x = bank["y"].reshape(budget, -1).log().float()
    prior = torch.distributions.MultivariateNormal(
        torch.tensor(PRIOR_LOC), PRIOR_SD**2 * torch.eye(4))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    inference = NPE(prior=prior, density_estimator=estimator, show_progress_bars=False)
    train_kwargs = {} if args.npe_max_epochs is None else {"max_num_epochs": args.npe_max_epochs}
    estimator_net = inference.append_simulations(theta, x).train(**train_kwargs)  # defaults
    posterior = inference.build_posterior(estimator_net)
    facts = {"train_seconds": time.perf_counter() - t0, "simulations": budget,
             "epochs": int(inference._summary["epochs_trained"][-1])
             if hasattr(inference, "_summary") else None,
             "sbi_version": sbi.__version__}

    def draw_at(y_obs: torch.Tensor):
        x_obs = y_obs.reshape(-1).log().float()

        def draw(n: int, s: int) -> torch.Tensor:
            torch.manual_seed(s)
            return posterior.sample((n,), x=x_obs, show_progress_bars=False).double().exp()

        return draw

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_posteriors import SbiPosterior  # for SBC / coverage (--sbc-datasets)

    wrapped = SbiPosterior(posterior, names, problem.obs_name, bank["y"].shape[1:])
    return draw_at, facts, wrapped


def run(args, save=None) -> dict:
    """Train and score every method; ``save(result)`` is called after every row."""
    torch.set_num_threads(getattr(args, "threads", 1))
    problem = problems.get("lotka_volterra")
    scorer = Scorer(problem, args.n_test, args.test_sets,
                    None if args.smoke else Path(args.plot_dir).parent / "floor_cache")
    tests = test_scorers(problem, args)
    sbi = import_sbi()
    skipped = {}
    if sbi is None:
        for m in ("npe_maf", "npe_nsf"):
            if m in args.methods:
                skipped[m] = ("sbi is not installed: the sbi peers were skipped (install the "
                              "'peers' extra: pip install 'pyro-kr[peers]')")
        log("SKIP npe_maf, npe_nsf: sbi is not installed (pip install 'pyro-kr[peers]')")
    rows = []

    def partial(rows):
        return {"rows": rows, "floor_w2": {k: scorer.floor[k] for k in ("raw", "scaled_log")},
                "floor_mmd2_unit_kernel": scorer.floor["mmd2_unit"], "n_test": scorer.n,
                "test_sets": args.test_sets, "skipped": skipped,
                "sbi_version": getattr(sbi, "__version__", None)}

    for seed in args.seeds:
        if "reverse" in args.methods:  # no simulation bank: trained once per seed
            rows.append(evaluate(scorer, problem, args, "reverse", None, seed,
                                 lambda s=seed: train_kr(problem, "reverse", None, 0, args,
                                                         s), tests)[0])
        for budget in args.budgets:
            u, y = problem.simulate(budget, seed=bank_seed(args, seed))
            bank = {**u, "y": y}
            kept = {}  # the forward guide (and its state), continued by the hybrid rows
            tasks = [(m, lr) for m in args.methods for lr in (
                (args.hybrid_reverse_lrs or [None]) if m == "hybrid_rws" else [None])]
            for method, lr in tasks:  # hybrid_rws: one row per --hybrid-reverse-lrs
                if method == "reverse" or method in skipped:
                    continue
                if method.startswith("hybrid") and "forward" in kept:
                    guide, facts, state = kept["forward"]
                    guide.load_state_dict(state)  # in place: the param store sees it
                    objective = {"hybrid_iwae": "iwae", "hybrid_rws": "rws"}.get(method, "elbo")
                    weight = args.hybrid_forward_weight if method == "hybrid_rws" else 0.0
                    fn = lambda g=guide, f=facts, o=objective, w=weight, r=lr: (  # noqa: E731
                        refine_kr(problem, g, f, args, o, w, scorer, r))
                elif method in ("hybrid_iwae", "hybrid_rws"):
                    raise ValueError(f"{method} continues the forward row: list forward first")
                elif method in ("forward", "hybrid"):
                    fn = lambda m=method, b=budget, s=seed, k=bank: train_kr(  # noqa: E731
                        problem, m, k, b, args, s)
                elif method == "cot":
                    fn = lambda b=budget, s=seed, k=bank: train_cot(  # noqa: E731
                        problem, k, b, args, s)
                else:
                    fn = lambda m=method, b=budget, s=seed, k=bank: train_npe(  # noqa: E731
                        sbi, problem, k, b, m.split("_")[1], args, s)
                row, guide = evaluate(scorer, problem, args, method, budget, seed, fn, tests)
                rows.append(row)
                if save is not None:
                    save(partial(rows))
                if method == "forward" and guide is not None:
                    state = {k: v.detach().clone() for k, v in guide.state_dict().items()}
                    kept["forward"] = (guide, {**row, "seed": seed}, state)
    return partial(rows)


def evaluate(scorer, problem, args, method, budget, seed, train,
             tests: list | None = None) -> tuple[dict, object]:
    """Train, score on the benchmark observation (and on the ``tests``: ``(record, Scorer)``
    pairs of ``--test-observations``) and (with ``--sbc-datasets``) calibrate."""
    log(f"{method} budget={budget} seed={seed}: training")
    cpu = time.process_time()  # CPU seconds of this process: the wall time under load inflates
    try:
        draw_at, facts, guide = train()
        draw = draw_at(problem.observation(0))
        facts["train_cpu_seconds"] = (time.process_time() - cpu
                                      - facts.get("trace_cpu_seconds", 0.0))
        if facts.get("continued_forward_row"):  # the whole hybrid: forward phase + this one
            facts["reverse_cpu_seconds"] = facts["train_cpu_seconds"]
            facts["train_cpu_seconds"] += facts.pop("forward_cpu_seconds")
        score = scorer.score(draw, marginals=getattr(args, "marginals", False))
    except Exception as error:  # noqa: BLE001 - record and go on with the other methods
        log(f"{method} budget={budget} seed={seed} failed: {error!r}")
        return {"method": method, "budget": budget, "seed": seed, "error": repr(error)}, None
    row = {"method": method, "budget": budget, "seed": seed,
           "w2": {k: score[k] for k in ("raw", "scaled_log")},
           "mmd2_unit_kernel": score["mmd2_unit"], **facts,
           **({"marginals": score["marginals"]} if "marginals" in score else {})}
    if tests:
        row["test_observations"] = score_tests(draw_at, tests)
        t = row["test_observations"]
        log(f"  {len(t)} test observations: W2 raw / floor "
            + " ".join(f"{o['w2']['raw']['mean']:.4f}/{o['floor_w2']['raw']:.4f}" for o in t))
    log(f"{method} budget={budget} seed={seed}: W2 raw {score['raw']['mean']:.4f}, scaled log "
        f"{score['scaled_log']['mean']:.4f}, MMD2 unit {score['mmd2_unit']['mean']:.2e} "
        f"({facts['train_seconds']:.0f} s)")
    if guide is not None and args.sbc_datasets and method in (args.sbc_methods or [method]):
        row["calibration"] = calibration(problem, guide, args)
        cal = row["calibration"]
        log(f"  SBC p {[round(p, 3) for p in cal['p_values']]}, joint coverage "
            f"{cal['joint_coverage']} ({cal['seconds']:.0f} s)")
    return row, guide


def test_scorers(problem, args) -> list:
    """``(record, Scorer)`` per accepted observation of ``--test-observations`` (none if unset):
    held-out prior-predictive observations with their NUTS references
    (``benchmarks/lv_test_observations.py``), scored like the benchmark observation."""
    if not getattr(args, "test_observations", None):
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lv_test_observations import load

    cache = None if args.smoke else Path(args.plot_dir).parent / "floor_cache"
    return [(record, Scorer(problem, args.n_test, args.test_sets, cache,
                            reference=record["reference"], tag=f"_test{record['index']}"))
            for record in load(args.test_observations)]


def score_tests(draw_at, tests: list) -> list[dict]:
    """W2 (raw, scaled log) and MMD² at each test observation, each with its floor."""
    out = []
    for record, scorer in tests:
        y_obs = torch.tensor(record["observation"], dtype=torch.float64)
        score = scorer.score(draw_at(y_obs))
        out.append({"index": record["index"],
                    "w2": {k: score[k] for k in ("raw", "scaled_log")},
                    "mmd2_unit_kernel": score["mmd2_unit"],
                    "floor_w2": {k: scorer.floor[k]["mean"] for k in ("raw", "scaled_log")},
                    "floor_mmd2_unit_kernel": scorer.floor["mmd2_unit"]["mean"]})
    return out


DEFAULT_VALIDATION_FRACTION = 0.1  # ``--validation-fraction``'s default (sbi's split too)


def label(row: dict) -> str:
    """The method's name; forward rows trained with fit_amortized's defaults are marked, so are
    rows kept as a tail average of the iterates (``--average-from``), rows of AmortizedKR's own
    default guide (``--library-guide``), and so is a validation
    split other than the default 10% (e.g. the paper's 10k + 10k), so that the table and the
    plot keep rows of the same budget and seed with different settings apart.

    >>> label({"method": "forward", "forward_defaults": True, "budget": 20000,
    ...        "validation_simulations": 10000})
    'forward (defaults, 50% val.)'
    """
    marks = ["defaults"] if row.get("forward_defaults") or row.get("cot_defaults") else []
    if row.get("library_guide"):  # AmortizedKR's own conditioner and embedding (--library-guide)
        marks.append("library guide")
    if row.get("continued_forward_row") and row.get("reverse_lr", 1e-3) != 1e-3:
        marks.append(f"reverse lr {row['reverse_lr']:g}")
    if row.get("kr_dtype", "float64") != "float64":
        marks.append(row["kr_dtype"])
    if row.get("average_from") is not None:
        marks.append(f"average from {row['average_from']:g}")
    n_val, budget = row.get("validation_simulations"), row.get("budget")
    if n_val is not None and budget and n_val != split(
            budget, DEFAULT_VALIDATION_FRACTION)["validation_simulations"]:
        marks.append(f"{100 * n_val / budget:.3g}% val.")
    return row["method"] + (f" ({', '.join(marks)})" if marks else "")


def print_table(result: dict) -> None:
    floor = result["floor_w2"]
    print()
    header = (f"{'method':<10}{'budget':>8}{'seed':>5}{'W2 raw u':>18}{'W2 scaled log u':>18}"
              f"{'MMD2 unit':>11}{'train s':>9}{'model evals':>13}  SBC / joint coverage")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        budget = "-" if r["budget"] is None else f"{r['budget']:,}"
        if "error" in r:
            print(f"{r['method']:<10}{budget:>8}{r['seed']:>5}  failed: {r['error']}")
            continue
        if "withdrawn" in r:
            print(f"{label(r):<10}{budget:>8}{r['seed']:>5}  withdrawn: {r['withdrawn']}")
            continue
        raw, sl = r["w2"]["raw"], r["w2"]["scaled_log"]
        mmd = r.get("mmd2_unit_kernel")
        mmd = f"{mmd['mean']:>11.2e}" if mmd else f"{'-':>11}"
        evals = r.get("model_evaluations") or 0
        cal = r.get("calibration")
        cal = (f"  rejected {cal['rejected_at_1pct'] or 'none'}; "
               + " ".join(f"{v:.2f}" for v in cal["joint_coverage"].values())) if cal else ""
        print(f"{label(r):<10}{budget:>8}{r['seed']:>5}"
              f"{raw['mean']:>10.4f} ± {raw['sd']:.4f}{sl['mean']:>10.4f} ± {sl['sd']:.4f}"
              f"{mmd}{r['train_seconds']:>9.0f}{evals:>13,}{cal}")
    mmd_floor = result.get("floor_mmd2_unit_kernel")
    print(f"noise floor (reference vs reference, n = {result['n_test']}, "
          f"{result['test_sets']} sets): W2 raw {floor['raw']['mean']:.4f}, scaled log "
          f"{floor['scaled_log']['mean']:.4f}"
          + (f", MMD2 unit kernel {mmd_floor['mean']:.1e}" if mmd_floor else ""))
    print_test_table(result)
    for method, why in result["skipped"].items():
        print(f"SKIPPED {method}: {why}")
    print(f"Kerrigan et al. 2024: W2 {PAPER_W2} (coordinates not stated), best MMD2 {PAPER_MMD} "
          "(kernel not stated)")


def print_test_table(result: dict) -> None:
    """W2 raw and scaled log at each ``--test-observations`` observation (rows that have them),
    and the mean over them, with the floors."""
    rows = [r for r in result["rows"] if r.get("test_observations") and "withdrawn" not in r]
    if not rows:
        return
    first = rows[0]["test_observations"]
    print(f"\nheld-out test observations {[o['index'] for o in first]}: W2 raw u | scaled log u"
          " (each a mean over the test sets), then the means over the observations")
    for r in rows:
        tests = r["test_observations"]
        raw = [o["w2"]["raw"]["mean"] for o in tests]
        sl = [o["w2"]["scaled_log"]["mean"] for o in tests]
        budget = "-" if r["budget"] is None else f"{r['budget']:,}"
        print(f"{label(r):<34}{budget:>8}{r['seed']:>5}  "
              + " ".join(f"{v:.4f}" for v in raw) + " | " + " ".join(f"{v:.3f}" for v in sl)
              + f"  mean {statistics.fmean(raw):.4f} | {statistics.fmean(sl):.3f}")
    print("floors: W2 raw " + " ".join(f"{o['floor_w2']['raw']:.4f}" for o in first)
          + " | scaled log " + " ".join(f"{o['floor_w2']['scaled_log']:.3f}" for o in first))


def plot(result: dict, out_dir: Path, figure: str | None = None) -> Path | None:
    """W2 against the simulation budget, log axes: mean over seeds, bars from min to max.

    Where several rows share a label (the method with its defaults and split marks: see
    ``label``), budget and seed (a rerun), the last one is plotted; a non-default validation
    split gets its own series (square markers), so does AmortizedKR's own default guide
    (``--library-guide``: diamonds, dashed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0))
    titles = {"raw": "W2, raw u", "scaled_log": "W2, log u / prior sd"}
    for ax, key in zip(axes, ("raw", "scaled_log"), strict=True):
        by_seed: dict[str, dict[int, dict[int, float]]] = {}
        for r in result["rows"]:
            if "error" in r or "withdrawn" in r or r["budget"] is None:
                continue
            # a rerun of the same method, budget and seed replaces the earlier row (the
            # later file in --merge wins): one point per seed, not one per run
            by_seed.setdefault(label(r), {}).setdefault(r["budget"], {})[r["seed"]] = (
                r["w2"][key]["mean"])
        by_method = {m: {b: list(v.values()) for b, v in pts.items()}
                     for m, pts in by_seed.items()}
        for i, (method, points) in enumerate(sorted(by_method.items())):
            xs = sorted(points)
            mean = [statistics.fmean(points[b]) for b in xs]
            shift = 1.05 ** (i - (len(by_method) - 1) / 2)  # side by side at one budget
            low = [m - min(points[b]) for m, b in zip(mean, xs, strict=True)]
            high = [max(points[b]) - m for m, b in zip(mean, xs, strict=True)]
            seeds = sorted({len(points[b]) for b in xs})
            ax.errorbar([x * shift for x in xs], mean, yerr=[low, high],
                        fmt=("s" if "% val." in method else "D" if "library guide" in method
                             else "o") + ("--" if "library guide" in method else "-"),
                        capsize=3,
                        color=COLORS.get(method.split()[0]),
                        mfc="white" if "(defaults" in method else None,
                        label=f"{method} ({'/'.join(map(str, seeds))} seeds)")
        for r in result["rows"]:
            if r["method"] == "reverse" and "error" not in r:
                ax.axhline(r["w2"][key]["mean"], color="black", ls=":", lw=1,
                           label="reverse (no bank)" if r["seed"] == min(
                               x["seed"] for x in result["rows"] if x["method"] == "reverse"
                           ) else None)
        ax.axhline(result["floor_w2"][key]["mean"], color="grey", ls="--", label="noise floor")
        if key == "raw":
            ax.axhline(PAPER_W2, color="black", ls="-.", lw=1,
                       label="Kerrigan et al. 2024 (coord. not stated)")
        ax.set(xscale="log", yscale="log", xlabel="simulations (train + validation; bars: "
               "min-max over seeds)",
               ylabel="W2", title=titles[key])
    path = out_dir / "w2_vs_budget.png"
    # one legend below both panels (the left one has every series): none covers the points
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=100)
    plt.close(fig)
    return path


def merge(paths: list[str], out: str, plot_dir: str,
          figure: str | None = None, withdraw: list[str] | None = None) -> dict:
    """Combine the JSON files of several runs (e.g. one per budget or seed, run in parallel).

    An earlier merged file may be one of them (its runs and rows are kept). All runs must use
    the same ``n_test``; runs with fewer ``--test-sets`` scored on the first of the same seeded
    reference subsets, and the floor is that of the run with the most sets. ``withdraw``:
    ``"LABEL=REASON"`` items; rows whose :func:`label` is ``LABEL`` stay in the file with
    ``"withdrawn": REASON`` and are left out of the table and the plot (e.g. rows a bug made
    meaningless).
    """
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    if len({d["n_test"] for d in payloads}) != 1:
        raise ValueError("the runs used different --n-test: their W2 are not comparable")
    runs, rows = [], []
    for path, d in zip(paths, payloads, strict=True):
        if "runs" in d:  # an earlier merge
            runs += [dict(r, test_sets=r.get("test_sets", d["test_sets"])) for r in d["runs"]]
            rows += d["rows"]
        else:
            runs.append({"file": Path(path).name, "command": d["command"],
                         "settings": d["settings"], "test_sets": d["test_sets"],
                         **({"git_commit": d["git_commit"]} if "git_commit" in d else {})})
            guide = {"library_guide": True} if d["settings"].get("library_guide") else {}
            rows += [dict(r, run=Path(path).name, **guide) for r in d["rows"]]
    for item in withdraw or []:
        name, sep, reason = item.partition("=")
        if not sep or not reason:
            raise ValueError(f"--withdraw takes LABEL=REASON, got {item!r}")
        matched = [r for r in rows if "error" not in r and label(r) == name]
        if not matched:
            raise ValueError(f"--withdraw {name!r}: no row has that label")
        for r in matched:
            r["withdrawn"] = reason
    most = max(payloads, key=lambda d: d["test_sets"])
    result = {
        "runs": runs, "rows": rows, "floor_w2": most["floor_w2"], "n_test": most["n_test"],
        "floor_mmd2_unit_kernel": next((d["floor_mmd2_unit_kernel"] for d in payloads
                                        if d.get("floor_mmd2_unit_kernel")), None),
        "test_sets": most["test_sets"],
        "skipped": {k: v for d in payloads for k, v in d["skipped"].items()},
        "sbi_version": next((d["sbi_version"] for d in payloads if d["sbi_version"]), None),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float))
    plot(result, Path(plot_dir), figure)
    print_table(result)
    return result


def _average_from(text: str) -> float | int:
    """``--average-from``: ``0.75`` -> a fraction of the steps, ``900`` -> a step."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+",
                        default=[1_000, 3_000, 10_000, 30_000, 100_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=float, default=200.0,
                        help="forward/COT steps = epochs x budget / batch (within the bounds)")
    parser.add_argument("--min-steps", type=int, default=2_000)
    parser.add_argument("--max-steps", type=int, default=40_000)
    parser.add_argument("--reverse-steps", type=int, default=10_000)
    parser.add_argument("--hybrid-reverse-steps", type=int, default=1_000)
    parser.add_argument("--hybrid-forward-weight", type=float, default=1.0,
                        help="hybrid_rws: forward_weight of its reverse phase")
    parser.add_argument("--hybrid-reverse-lrs", type=float, nargs="+", default=None,
                        help="hybrid_rws: one refinement (row) per reverse learning rate, each "
                             "from the same forward guide (default: --lr-reverse)")
    parser.add_argument("--hybrid-trace-at", type=int, nargs="*", default=None,
                        help="hybrid_rws: also score the guide at these reverse steps")
    parser.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    parser.add_argument("--num-particles", type=int, default=None)
    parser.add_argument("--batch-forward", type=int, default=256)
    parser.add_argument("--batch-reverse", type=int, default=128)
    parser.add_argument("--lr-forward", type=float, default=2e-3)
    parser.add_argument("--lr-reverse", type=float, default=1e-3)
    parser.add_argument("--validation-fraction", type=float,
                        default=DEFAULT_VALIDATION_FRACTION,
                        help="our modes' validation share of the bank (0.5: the paper's "
                             "10k + 10k at --budgets 20000); sbi keeps its own default split")
    parser.add_argument("--sbc-datasets", type=int, default=0,
                        help="SBC and coverage of every row on this many datasets "
                             "(0: none; the same datasets for every row)")
    parser.add_argument("--sbc-methods", nargs="+", default=None,
                        choices=KR_METHODS + ("cot", "npe_maf", "npe_nsf"),
                        help="calibrate only these rows (default: every row)")
    parser.add_argument("--forward-defaults", action="store_true",
                        help="forward (and hybrid's forward phase): fit_amortized's default "
                             "steps, optimizer, validation and stopping; only --batch-forward "
                             "and --validation-fraction are passed")
    parser.add_argument("--forward-option", action="append", metavar="NAME=VALUE",
                        help="with --forward-defaults: pass fit_amortized(NAME=VALUE) (a JSON "
                             "value, e.g. ema_decay=0.999); repeatable")
    parser.add_argument("--average-from", type=_average_from, default=None,
                        help="forward/hybrid/reverse rows: fit_amortized(average_from=...), the "
                             "tail average of the parameters (a float in (0, 1) or an int "
                             "step); with --forward-defaults give --forward-option steps=N")
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 2 measures the wall-clock on 2 cores: "
                             "train_seconds is then the wall-clock, train_cpu_seconds the sum "
                             "over both threads)")
    parser.add_argument("--library-guide", action="store_true",
                        help="build AmortizedKR with its own defaults (conditioner widths, "
                             "embedding, depth): --depth, --hidden and --embedding-dim are "
                             "ignored")
    parser.add_argument("--embedding-hidden", type=int, nargs="+", default=None,
                        help="hidden widths of the KR guides' embedding MLP (default: "
                             "AmortizedKR's own, (64, 64))")
    parser.add_argument("--bank-seed", type=int, default=None,
                        help="seed of the simulation bank for every --seeds value (default: "
                             "10,000 + seed): with --init-seed, bank and network apart")
    parser.add_argument("--init-seed", type=int, default=None,
                        help="KR guides: seed of the network initialization and the training "
                             "stream (default: the --seeds value)")
    parser.add_argument("--stream-seed", type=int, default=None,
                        help="KR guides: reseed the training stream (minibatches) with this "
                             "after the networks are built from --init-seed (default: no "
                             "reseeding, one stream from --init-seed)")
    parser.add_argument("--test-observations", default=None, metavar="DIR",
                        help="also score every method on the held-out observations of DIR "
                             "(benchmarks/lv_test_observations.py builds them: prior-predictive "
                             "y with NUTS references); rows gain 'test_observations'")
    parser.add_argument("--marginals", action="store_true",
                        help="rows also record each parameter's location error (in reference "
                             "sds) and sd ratio on the benchmark observation")
    parser.add_argument("--kr-dtype", choices=["float64", "float32"], default="float64",
                        help="our KR guides' networks (and so their training) in this dtype; "
                             "float64 is the model's own (Lotka-Volterra)")
    parser.add_argument("--cot-width", type=int, default=256)
    parser.add_argument("--cot-depth", type=int, default=4)
    parser.add_argument("--cot-full-max", type=int, default=10_000,
                        help="full OT plan up to this budget, minibatch plans above")
    parser.add_argument("--cot-defaults", action="store_true",
                        help="cot: COTFlowMatching.fit's own defaults (coupling, steps, lr, "
                             "schedule); only the batch size, the seed and a held-out "
                             "--validation-fraction of the bank (at most --cot-validation-max "
                             "pairs) are passed")
    parser.add_argument("--cot-validation-max", type=int, default=2_000,
                        help="with --cot-defaults: cap on the held-out pairs (COT-FM's "
                             "validation is an exact joint W2, O(n^2))")
    parser.add_argument("--npe-max-epochs", type=int, default=None,
                        help="cap sbi's epochs (default: sbi's own early stopping; smoke: 2)")
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--test-sets", type=int, default=5)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--plot-dir", default=str(PLOTS))
    parser.add_argument("--figure", default=None,
                        help="also write the plot here (e.g. docs/figures/amortized_budget.png)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, seconds")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only combine the result files of earlier runs into --out")
    parser.add_argument("--withdraw", action="append", metavar="LABEL=REASON",
                        help="with --merge: keep the rows of this label in the file, marked "
                             "withdrawn with the reason, out of the table and plot; repeatable")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.plot_dir, args.figure, args.withdraw)
    if args.smoke:
        args.budgets, args.seeds = [200], [0]
        args.min_steps = args.max_steps = args.reverse_steps = args.hybrid_reverse_steps = 3
        args.batch_forward, args.batch_reverse, args.validate_every = 32, 8, 2
        args.hidden, args.depth, args.cot_width, args.cot_depth = [8], 1, 16, 2
        args.n_test, args.test_sets, args.npe_max_epochs = 100, 1, 2
        args.sbc_datasets = min(args.sbc_datasets, 10)
    header = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "settings": vars(args), "torch_threads": args.threads,
              "git_commit": git_commit()}
    writes = not args.smoke or args.out != str(RESULTS)

    def save(result: dict) -> None:  # after every row: a stopped run keeps what it finished
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({**header, **result}, indent=1, default=float))

    result = run(args, save if writes else None)
    payload = {**header, **result}
    if writes:
        save(result)
        log(f"wrote {args.out}")
        path = plot(result, Path(args.plot_dir), args.figure)
        if path is not None:
            log(f"plot: {path}")
    print_table(result)
    return payload


if __name__ == "__main__":
    main()
