"""``fit``: history, progress bar, NaN handling and bit-for-bit checkpoint/resume on CPU."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import SGD, Adam

from pyro_kr import Annealing, AutoKR, History, NonFiniteLossError, TransportELBO, fit

DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    loc = torch.stack([a + b[..., 0], b[..., 0] - b[..., 1], a], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_history_records_loss_elbo_and_schedule():
    guide = AutoKR(model, map="affine")
    schedule = Annealing(eps=(1.0, 1e-2), lam=(1.0, 1e2), steps=10)
    history = fit(model, guide, Y, loss=TransportELBO(schedule, num_particles=2), steps=15,
                  progress=False)
    assert isinstance(history, History) and history.steps == 15
    assert len(history.elbo) == len(history.eps) == len(history.lam) == 15
    assert history.eps == pytest.approx([schedule.values(k)[0] for k in range(15)])
    assert history.lam == pytest.approx([schedule.values(k)[1] for k in range(15)])
    assert all(math.isfinite(v) for v in history.loss)
    assert history.loss[0] != pytest.approx(-history.elbo[0])  # the cost is in the loss
    assert history.seconds > 0
    restored = History.from_state_dict(history.state_dict())
    assert restored == history


def test_default_loss_is_trace_elbo_and_training_improves_it():
    guide = AutoKR(model, map="affine")
    history = fit(model, guide, Y, steps=300, lr=0.05, progress=False)
    assert history.elbo == [-v for v in history.loss]
    assert history.lam == [math.inf] * 300
    first, last = sum(history.loss[:20]) / 20, sum(history.loss[-20:]) / 20
    assert last < first - 1.0


def test_progress_bar_is_shown_or_hidden(capsys):
    fit(model, AutoKR(model, map="affine"), Y, steps=3, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    fit(model, AutoKR(model, map="affine"), Y, loss=TransportELBO(Annealing(steps=3)),
        steps=3, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "3/3" in err


def test_progress_bar_shows_only_the_fields_the_loss_reports():
    from pyro_kr.fit import _postfix

    annealed = _postfix({"loss": 2.0, "elbo": -1.5, "eps": 0.1, "lam": 10.0}, 2.0)
    assert annealed == {"loss": "2", "elbo": "-1.5", "eps": "0.1", "lam": "10"}
    # forward-mode amortized training: no ELBO, no schedule -> no "nan" / "inf" fields
    assert _postfix({"loss": 3.0, "elbo": math.nan}, 3.0) == {"loss": "3"}
    assert _postfix({"loss": 1.0, "elbo": -1.0, "lam": math.inf}, 1.0) == {
        "loss": "1", "elbo": "-1"
    }


def test_callback_sees_every_step_and_can_stop():
    seen = []

    def callback(step, record):
        seen.append((step, record["loss"]))
        return step == 4

    history = fit(model, AutoKR(model, map="affine"), Y, steps=50, progress=False,
                  callback=callback)
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert history.steps == 5
    assert [v for _, v in seen] == history.loss


class PoisonAt(Trace_ELBO):
    """Trace_ELBO whose gradients and loss turn NaN at one step (counted from 0)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        value = super().loss_and_grads(model, guide, *args, **kwargs)
        self.calls += 1
        if self.calls - 1 == self.bad_step:
            for p in pyro.get_param_store().values():
                p.unconstrained().grad.fill_(math.nan)
            return math.nan
        return value


def test_nan_loss_names_the_step_and_restores_the_parameters():
    guide = AutoKR(model)
    snapshots = {}

    def callback(step, record):
        snapshots[step] = params()

    with pytest.raises(NonFiniteLossError, match="loss is nan at step 6; parameters restored"):
        fit(model, guide, Y, loss=PoisonAt(6), steps=20, lr=0.05, progress=False,
            callback=callback)
    now = params()
    assert all(torch.isfinite(v).all() for v in now.values())
    assert set(now) == set(snapshots[5])
    for name, value in snapshots[5].items():
        torch.testing.assert_close(now[name], value, rtol=0, atol=0)
    # the restored parameters are the ones the guide uses
    draws = guide.sample_posterior(10, Y)
    assert all(torch.isfinite(v).all() for v in draws.values())


def test_inf_loss_also_stops():
    class InfLoss(PoisonAt):
        def loss_and_grads(self, *args, **kwargs):
            value = super().loss_and_grads(*args, **kwargs)
            return math.inf if math.isnan(value) else value

    with pytest.raises(NonFiniteLossError, match="loss is inf at step 0"):
        fit(model, AutoKR(model), Y, loss=InfLoss(0), steps=3, progress=False)


def test_nan_gradients_with_a_finite_loss_also_stop():
    class PoisonGradients(PoisonAt):
        def loss_and_grads(self, *args, **kwargs):
            value = super().loss_and_grads(*args, **kwargs)
            return 1.0 if math.isnan(value) else value  # finite loss, NaN gradients

    guide = AutoKR(model)
    snapshots = {}

    def callback(step, record):
        snapshots[step] = params()

    with pytest.raises(NonFiniteLossError, match=r"parameters \[.*\] became NaN/inf at step 3"):
        fit(model, guide, Y, loss=PoisonGradients(3), steps=10, lr=0.05, progress=False,
            callback=callback)
    for name, value in snapshots[2].items():
        torch.testing.assert_close(params()[name], value, rtol=0, atol=0)


def _run(path=None, stop_at=None, steps: int = 30, checkpoint_every: int = 100):
    """A monotone AutoKR with the annealed objective; optionally interrupted at ``stop_at``."""
    pyro.clear_param_store()
    guide = AutoKR(model)
    loss = TransportELBO(Annealing(eps=(1.0, 1e-2), lam=(1.0, 1e3), steps=20), num_particles=3)

    def callback(step, record):
        if step == stop_at:
            raise KeyboardInterrupt

    history = fit(model, guide, Y, loss=loss, steps=steps, lr=0.02, progress=False,
                  checkpoint=path, checkpoint_every=checkpoint_every, callback=callback)
    return history, params(), guide


def test_resumed_run_reproduces_the_uninterrupted_one_bit_for_bit(tmp_path):
    pyro.set_rng_seed(123)
    full_history, full_params, _ = _run()
    full_rng = torch.get_rng_state()

    path = tmp_path / "run.pt"
    pyro.set_rng_seed(123)
    with pytest.raises(KeyboardInterrupt):
        _run(path, stop_at=17, checkpoint_every=10)  # the file holds step 10
    assert torch.load(path, weights_only=False)["step"] == 10

    pyro.set_rng_seed(999)  # a fresh process: a different RNG state and new objects
    torch.rand(7)
    history, resumed, _ = _run(path)
    assert history.steps == 30
    assert history.loss == full_history.loss  # exact float equality
    assert history.eps == full_history.eps and history.lam == full_history.lam
    assert set(resumed) == set(full_params)
    for name, value in full_params.items():
        assert torch.equal(resumed[name], value), name
    # and the RNG ends where the uninterrupted run's did
    assert torch.equal(torch.get_rng_state(), full_rng)


def test_finished_checkpoint_resumes_as_a_no_op_and_extends(tmp_path):
    path = tmp_path / "run.pt"
    pyro.set_rng_seed(1)
    history, first, _ = _run(path, steps=12)
    assert torch.load(path, weights_only=False)["step"] == 12
    again, second, _ = _run(path, steps=12)
    assert again.loss == history.loss
    for name in first:
        assert torch.equal(first[name], second[name])
    longer, _, _ = _run(path, steps=15)
    assert longer.steps == 15 and longer.loss[:12] == history.loss


def test_checkpoint_from_a_different_guide_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    _run(path, steps=2)
    pyro.clear_param_store()

    def other(y):
        pyro.sample("c", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))

    with pytest.raises(RuntimeError, match="different model or guide"):
        fit(other, AutoKR(other), Y, steps=3, checkpoint=path, progress=False)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot be read.*delete it to start over"):
        fit(model, AutoKR(model), Y, steps=3, checkpoint=path, progress=False)


def test_optim_argument():
    guide = AutoKR(model, map="affine")
    history = fit(model, guide, Y, steps=5, optim=SGD({"lr": 1e-3}), progress=False)
    assert history.steps == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": -1}, ValueError, "steps must be a positive int, got -1"),
        ({"steps": 1.5}, ValueError, "steps must be a positive int"),
        ({"lr": 0.0}, ValueError, "lr must be > 0, got 0.0"),
        ({"lr": 0.1, "optim": Adam({"lr": 0.1})}, ValueError, "either lr or optim"),
        ({"optim": torch.optim.Adam}, TypeError, "pyro.optim optimizer"),
        ({"checkpoint_every": 0}, ValueError, r"checkpoint_every must be >= 1 \(or None"),
    ],
)
def test_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(model, AutoKR(model), Y, progress=False, **kwargs)
