"""The flow-matching training loop: couplings, regression on ``u1 - u0``, validation, checkpoints.

Conventions shared with :func:`pyro_kr.fit`: its progress (a tqdm bar on a terminal, plain
lines in logs; ``progress=False`` turns it off), a non-finite loss raises
``FloatingPointError`` naming the step after restoring the last parameters that gave a finite
loss, and checkpoints are written atomically (temporary file + ``os.replace``) so a resumed
run continues from the saved step.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pyro_kr.checkpoint import atomic_save, load_checkpoint
from pyro_kr.flow_matching.couplings import (
    PlanSampler,
    block_plan_sampler,
    cot_plan,
    match_pairs,
)
from pyro_kr.flow_matching.ode import rk4_flow
from pyro_kr.flow_matching.velocity import call_velocity
from pyro_kr.history import TrainingHistory
from pyro_kr.metrics import w2
from pyro_kr.progress import progress_bar

__all__ = [
    "COUPLINGS",
    "FlowMatchingHistory",
    "TrainConfig",
    "run_generator",
    "train_flow_matching",
    "w2",
]

COUPLINGS = ("full", "minibatch", "independent")
LR_SCHEDULES = ("constant", "cosine")


_STREAM_KEY = 0x434F54464D  # "COTFM": separates the run's stream from torch.manual_seed(seed)


def run_generator(seed: int) -> torch.Generator:
    """The seeded generator behind a run's noise, times, batches and couplings.

    ``torch.Generator().manual_seed(seed)`` would replay the stream of the *global* generator
    after ``torch.manual_seed(seed)``: data drawn by a user with ``torch.manual_seed(0)`` (e.g.
    ``y = torch.randn(n, 1)``) would then coincide with the source noise ``u0`` of a run with
    ``seed=0``, and a source ``(y, u0 = y)`` is not ``nu_Y x N(0, I)``. The generator is seeded
    with a 64-bit key derived from ``(seed, "COTFM")`` by :class:`numpy.random.SeedSequence`
    instead, so equal seeds still give equal runs but never the user's stream.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(3)
        >>> bool(torch.equal(torch.randn(3, generator=run_generator(0)), x))
        False
    """
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    entropy = [seed % 2**64, _STREAM_KEY]
    key = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(key))


@dataclass(frozen=True)
class TrainConfig:
    """Options of one flow-matching run (see :meth:`COTFlowMatching.fit` for their meaning)."""

    steps: int = 20_000
    eps: float = 1e-4
    sigma: float = 1e-2
    batch_size: int = 256
    coupling: str = "independent"
    lr: float = 1e-3
    seed: int = 0
    validate_every: int = 1_000
    validation_ode_steps: int = 20
    checkpoint_every: int = 1_000
    plan_refresh_every: int | None = None
    plan_block_size: int | None = None
    ema_decay: float | None = None
    lr_schedule: str = "cosine"

    def resume_key(self) -> dict:
        """The options a resumed run must share with the checkpoint."""
        key = {
            "eps": self.eps,
            "sigma": self.sigma,
            "batch_size": self.batch_size,
            "coupling": self.coupling,
            "seed": self.seed,
        }
        if self.plan_refresh_every is not None:  # absent: checkpoints of older runs resume
            key["plan_refresh_every"] = self.plan_refresh_every
        if self.plan_block_size is not None:
            key["plan_block_size"] = self.plan_block_size
        if self.ema_decay is not None:
            key["ema_decay"] = self.ema_decay
        if self.lr_schedule != "constant":  # the cosine schedule is fixed by the total steps
            key["lr_schedule"] = self.lr_schedule
            key["steps"] = self.steps
        return key


class _WeightAverage:
    """An exponential moving average of the velocity's parameters (``ema_decay``).

    Built on :class:`torch.optim.swa_utils.AveragedModel`; :meth:`swapped_in` puts the averaged
    weights into the trained module for validation and for the state that is kept.
    """

    def __init__(self, velocity: nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.velocity = velocity
        self.average = AveragedModel(velocity, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def update(self) -> None:
        self.average.update_parameters(self.velocity)

    @contextlib.contextmanager
    def swapped_in(self):
        live = [p.detach().clone() for p in self.velocity.parameters()]
        self.copy_into_velocity()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, kept in zip(self.velocity.parameters(), live, strict=True):
                    p.copy_(kept)

    def copy_into_velocity(self) -> None:
        with torch.no_grad():
            for p, avg in zip(self.velocity.parameters(), self.average.module.parameters(),
                              strict=True):
                p.copy_(avg)


@dataclass
class FlowMatchingHistory(TrainingHistory):
    """:class:`~pyro_kr.history.TrainingHistory` of :meth:`COTFlowMatching.fit`.

    Per-step losses (``loss``), validation W2 (``(step, w2)`` pairs), best step and timings.
    ``coupling_seconds`` is the time spent on full plans (the first one and every refresh);
    ``train_seconds`` the time of the optimisation loop without the refreshes; ``seconds``
    their sum (the run's wall time, as in every history).
    """

    val_w2: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_w2: float = float("inf")
    train_seconds: float = 0.0
    coupling_seconds: float = 0.0


class _Batches:
    """Draws coupled minibatches ``(y0, u0, y1, u1)`` for one coupling strategy."""

    def __init__(self, u, y, y_source, config: TrainConfig, gen: torch.Generator, state=None):
        self.u, self.y, self.y_source = u, y, y_source
        self.config, self.gen = config, gen
        self.sampler: PlanSampler | None = None
        self.u0_full: torch.Tensor | None = None
        if config.coupling == "full":
            if state is not None:
                self.u0_full = state["u0"].to(u)
                self.sampler = PlanSampler.from_support(
                    state["rows"], state["cols"], state["weights"], state["shape"]
                )
            else:
                self.refresh()

    def refresh(self) -> None:
        """Draw new source noise and recompute the full plan (``coupling="full"``)."""
        n = self.y_source.shape[0]
        self.sampler = None  # free the previous plan's support before building the next
        self.u0_full = torch.randn(n, self.u.shape[1], generator=self.gen).to(self.u)
        block = self.config.plan_block_size
        if block is not None and max(n, self.y.shape[0]) > block:
            self.sampler = block_plan_sampler(
                self.y_source, self.u0_full, self.y, self.u, eps=self.config.eps,
                block_size=block, generator=self.gen,
            )
            return
        plan = cot_plan(self.y_source, self.u0_full, self.y, self.u, eps=self.config.eps)
        self.sampler = PlanSampler(plan)
        del plan

    def state(self) -> dict | None:
        if self.sampler is None:
            return None
        s = self.sampler
        return {
            "u0": self.u0_full,
            "rows": s.rows,
            "cols": s.cols,
            "weights": s.weights,
            "shape": s.shape,
        }

    def __call__(self):
        cfg, gen = self.config, self.gen
        if cfg.coupling == "full":
            i, j = self.sampler.sample(cfg.batch_size, generator=gen)
            return self.y_source[i], self.u0_full[i], self.y[j], self.u[j]
        n, m = self.y.shape[0], self.y_source.shape[0]
        j = torch.randint(n, (cfg.batch_size,), generator=gen)
        u0 = torch.randn(cfg.batch_size, self.u.shape[1], generator=gen).to(self.u)
        y1, u1 = self.y[j], self.u[j]
        if cfg.coupling == "independent":
            # conditional FM without OT (the "FM" ablation): each pair keeps its own y and
            # gets independent noise, u0 independent of u1
            return y1, u0, y1, u1
        y0 = self.y_source[torch.randint(m, (cfg.batch_size,), generator=gen)]
        rows, cols = match_pairs(cot_plan(y0, u0, y1, u1, eps=cfg.eps), generator=gen)
        return y0[rows], u0[rows], y1[cols], u1[cols]


def validation_w2(velocity: nn.Module, u_val, y_val, *, ode_steps: int, seed: int) -> float:
    """Joint W2 between ``(y_val, u_val)`` and ``(y_val, flow samples given y_val)``."""
    gen = run_generator(seed)
    u0 = torch.randn(u_val.shape, generator=gen).to(u_val)
    with torch.no_grad():
        u1 = rk4_flow(velocity, u0, y_val, steps=ode_steps)
    if not bool(torch.isfinite(u1).all()):
        return float("inf")  # a flow that blows up on validation data is never the best model
    return w2(torch.cat([y_val, u1], -1), torch.cat([y_val, u_val], -1))


def train_flow_matching(
    velocity: nn.Module,
    owner: nn.Module,
    u: torch.Tensor,
    y: torch.Tensor,
    y_source: torch.Tensor,
    config: TrainConfig,
    *,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    extra_state: Callable[[], dict] | None = None,
) -> FlowMatchingHistory:
    """Regress ``velocity`` on ``u1 - u0`` along coupled straight paths (Kerrigan et al. 2024, eq.
    10).

    Per step: draw a coupled batch, ``t ~ U(0, 1)``, ``z_t = t z1 + (1 - t) z0 + sigma * noise``
    on both blocks, loss ``mean |v(t, y_t, u_t) - (u1 - u0)|^2``, one Adam step (learning rate
    constant or cosine-annealed to 0 over ``config.steps``). With ``config.ema_decay`` the
    validation and the returned module use the moving average of the parameters.

    Args:
        velocity: the velocity module being trained (its parameters are optimised).
        owner: module whose ``state_dict`` is checkpointed and whose best state is restored.
        u: target parameters ``(n, dim_u)`` (already standardised).
        y: target data ``(n, dim_y)``.
        y_source: source data ``(m, dim_y)`` (same marginal as ``y``).
        config: run options.
        validation: optional held-out ``(u_val, y_val)``; the best-W2 state is kept.
        progress: show the steps (a tqdm bar on a terminal or in a notebook, plain lines in
            logs).
        checkpoint: optional path; resumed from if it exists.
        extra_state: optional callable returning more entries to store in the checkpoint.

    Returns:
        The run's :class:`FlowMatchingHistory`.
    """
    gen = run_generator(config.seed)
    params = [p for p in velocity.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
        if config.lr_schedule == "cosine"
        else None
    )
    average = None if config.ema_decay is None else _WeightAverage(velocity, config.ema_decay)
    history = FlowMatchingHistory()
    best_state = None
    start = 0
    saved = None
    if checkpoint is not None and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint)
        if saved["config"] != config.resume_key():
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint)!r} was written with {saved['config']}, "
                f"but this run uses {config.resume_key()}; use another checkpoint path"
            )
        owner.load_state_dict(saved["owner"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if average is not None:
            average.average.load_state_dict(saved["average"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history = saved["history"]
        best_state = saved["best_state"]
        start = saved["step"]
    t_coupling = time.perf_counter()
    batches = _Batches(u, y, y_source, config, gen, None if saved is None else saved["plan"])
    if saved is None:
        history.coupling_seconds = time.perf_counter() - t_coupling

    def save(step: int) -> None:
        state = {
            "step": step,
            "config": config.resume_key(),
            "owner": owner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "best_state": best_state,
            "plan": batches.state(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "average": None if average is None else average.average.state_dict(),
        }
        if extra_state is not None:
            state.update(extra_state())
        atomic_save(state, os.fspath(checkpoint))

    def validate(step: int) -> None:
        nonlocal best_state
        with contextlib.nullcontext() if average is None else average.swapped_in():
            value = validation_w2(
                velocity, *validation, ode_steps=config.validation_ode_steps, seed=config.seed
            )
            history.val_w2.append((step, value))
            if value < history.best_w2:
                history.best_w2, history.best_step = value, step
                best_state = copy.deepcopy(owner.state_dict())

    last_good = [p.detach().clone() for p in params]
    bar = progress_bar(progress, config.steps, start, desc="COT-FM")
    began = time.perf_counter()
    refresh = config.plan_refresh_every if config.coupling == "full" else None
    for step in range(start, config.steps):
        if refresh is not None and step > 0 and step % refresh == 0:
            t_coupling = time.perf_counter()
            batches.refresh()  # fresh noise, new plan: the fixed pairs are not memorised
            spent = time.perf_counter() - t_coupling
            history.coupling_seconds += spent
            began += spent  # train_seconds counts the optimisation steps only
        y0, u0, y1, u1 = batches()
        t = torch.rand(y0.shape[0], 1, generator=gen).to(u)
        y_t = t * y1 + (1 - t) * y0 + config.sigma * torch.randn(y0.shape, generator=gen).to(u)
        u_t = t * u1 + (1 - t) * u0 + config.sigma * torch.randn(u0.shape, generator=gen).to(u)
        loss = (call_velocity(velocity, t.squeeze(-1), y_t, u_t) - (u1 - u0)).square().mean()
        if not bool(torch.isfinite(loss)):
            with torch.no_grad():
                for p, good in zip(params, last_good, strict=True):
                    p.copy_(good)
            bar.close()
            raise FloatingPointError(
                f"flow-matching loss is {loss.item()} at step {step}; the last parameters with a "
                "finite loss were restored (lower lr, or check the data for extreme values)"
            )
        last_good = [p.detach().clone() for p in params]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update()
        history.loss.append(float(loss.detach()))
        done = step + 1
        if validation is not None and (done % config.validate_every == 0 or done == config.steps):
            validate(done)
        if checkpoint is not None and (
            done % config.checkpoint_every == 0 or done == config.steps
        ):
            history.train_seconds += time.perf_counter() - began
            began = time.perf_counter()
            save(done)
        if done % 50 == 0 or done == config.steps:
            postfix = {"loss": f"{history.loss[-1]:.4f}"}
            if history.val_w2:
                postfix["val_w2"] = f"{history.val_w2[-1][1]:.4f}"
            bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    bar.close()
    history.train_seconds += time.perf_counter() - began
    history.seconds = history.train_seconds + history.coupling_seconds
    if best_state is not None:
        owner.load_state_dict(best_state)
    elif average is not None:
        average.copy_into_velocity()
    return history
