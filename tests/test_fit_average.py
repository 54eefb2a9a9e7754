"""``fit(..., average_from=...)``: the tail (Polyak-Ruppert) average of the parameters is
swapped in at the end (issue 18). Training is untouched (the same losses as without it), the
result is the mean of the iterates after the start, the end check and the restarts' choice
judge the average, resume from a checkpoint is exact, and bad values are refused before the
first step."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.checkpoint import snapshot_params
from pyro_kr.restarts import heldout_elbo

stall = importlib.import_module("pyro_kr.diagnostics.stall")
DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)
STEPS = 40


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    loc = torch.stack([a + b[..., 0], b[..., 0] - b[..., 1], a], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def _run(map_kind="affine", steps=STEPS, schedule=True, **options):
    """Train from seed 0; return (History, final parameters, parameters after every step as
    the callback sees them)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoKR(model, map=map_kind)
    loss = TransportELBO(Annealing.over(steps) if schedule else None, num_particles=4)
    seen = []
    user = options.pop("callback", None)

    def callback(step, record):
        seen.append(snapshot_params())
        return user(step, record) if user is not None else None

    options.setdefault("check", False)
    _run.guide = guide
    history = fit(model, guide, Y, loss=loss, steps=steps, lr=2e-2, progress=False,
                  callback=callback, **options)
    return history, snapshot_params(), seen


def _mean(iterates):
    return {k: torch.stack([it[k] for it in iterates]).mean(0) for k in iterates[0]}


def _assert_params(actual, expected, exact=True):
    assert actual.keys() == expected.keys()
    for k in expected:
        if exact:
            assert torch.equal(actual[k], expected[k]), k
        else:
            torch.testing.assert_close(actual[k], expected[k], rtol=1e-12, atol=1e-12)


def test_default_path_is_unchanged():
    plain, params, seen = _run()
    off, params_off, _ = _run(average_from=None)
    assert plain.loss == off.loss
    _assert_params(params_off, params)
    _assert_params(params, seen[-1])  # without averaging the last iterate is returned
    assert plain.average_starts == [] and plain.averaged_steps == []


@pytest.mark.parametrize("rule", [{}, {"lr_decay": False}, {"lr_decay_from": "plateau"}])
@pytest.mark.parametrize("average_from, skip", [(0.5, 20), (0.75, 30), (0, 0), (37, 37)])
def test_result_is_the_mean_of_the_tail_and_training_is_unchanged(rule, average_from, skip):
    plain, last, seen = _run(**rule)
    averaged, params, live = _run(average_from=average_from, **rule)
    assert averaged.loss == plain.loss  # the same run: the same losses and lr schedule
    assert averaged.lr_decay_start == plain.lr_decay_start
    _assert_params(live[-1], last)  # the callback saw the live parameters
    _assert_params(params, _mean(seen[skip:]), exact=False)
    assert averaged.average_starts == [skip]
    assert averaged.averaged_steps == [STEPS - skip]


def test_the_end_check_judges_the_average(monkeypatch):
    judged = []
    monkeypatch.setattr(stall, "warn_if_unhealthy",
                        lambda *a, **k: judged.append(snapshot_params()))
    _, params, seen = _run(average_from=0.5, check=True)
    assert len(judged) == 1
    _assert_params(judged[0], params)
    _assert_params(params, _mean(seen[20:]), exact=False)


def test_restarts_average_each_run_and_choose_by_the_average():
    history, params, seen = _run(average_from=0.5, restarts=3, restart_draws=200)
    runs = [seen[i * STEPS:(i + 1) * STEPS] for i in range(3)]  # the callback runs in each
    chosen = history.chosen_restart
    _assert_params(params, _mean(runs[chosen][20:]), exact=False)
    assert history.average_starts == [20] and history.averaged_steps == [20]
    # the held-out ELBO recorded for the chosen run is the one of the averaged parameters
    elbo, _ = heldout_elbo(_run.guide, model, (Y,), num_draws=200)
    assert elbo == pytest.approx(history.restarts[chosen]["elbo"], rel=1e-12, abs=1e-12)


def test_resume_from_a_checkpoint_is_exact(tmp_path):
    whole, params, _ = _run(average_from=0.5, checkpoint=tmp_path / "a.pt",
                            checkpoint_every=10)
    # interrupted after 25 steps (inside the average, which starts after step 20) ...
    first, _, _ = _run(average_from=0.5, checkpoint=tmp_path / "b.pt", checkpoint_every=10,
                       callback=lambda step, record: step == 24)
    assert first.steps == 25 and first.averaged_steps == [5]
    # ... and resumed to the end: the same losses and the same average
    resumed, params_resumed, _ = _run(average_from=0.5, checkpoint=tmp_path / "b.pt",
                                      checkpoint_every=10)
    assert resumed.loss == whole.loss
    assert resumed.averaged_steps == [20]
    _assert_params(params_resumed, params)
    # the checkpoint holds the live parameters, not the average
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    assert saved["average"]["count"] == 20
    _, last, _ = _run()
    _assert_params(saved["params"], last)


def test_resume_before_the_average_from_a_checkpoint_without_one(tmp_path):
    whole, params, _ = _run(average_from=0.5)
    _run(checkpoint=tmp_path / "c.pt", callback=lambda step, record: step == 14)  # 15 steps
    resumed, params_resumed, _ = _run(average_from=0.5, checkpoint=tmp_path / "c.pt")
    assert resumed.loss == whole.loss
    _assert_params(params_resumed, params)


def test_resume_refuses_what_cannot_be_exact(tmp_path):
    _run(checkpoint=tmp_path / "d.pt", callback=lambda step, record: step == 24)  # 25 steps
    with pytest.raises(ValueError, match="written without average_from.*after step 20"):
        _run(average_from=0.5, checkpoint=tmp_path / "d.pt")
    _run(average_from=0.5, checkpoint=tmp_path / "e.pt",
         callback=lambda step, record: step == 24)
    with pytest.raises(ValueError, match="leaves out 20 steps.*leaves out 10"):
        _run(average_from=0.25, checkpoint=tmp_path / "e.pt")


def test_a_run_stopped_before_its_average_keeps_the_last_iterate():
    with pytest.warns(RuntimeWarning, match="before its tail average starts"):
        history, params, seen = _run(average_from=0.5,
                                     callback=lambda step, record: step == 9)
    _assert_params(params, seen[-1])
    assert history.average_starts == [20] and history.averaged_steps == [0]


@pytest.mark.parametrize("bad", [1.0, 0.0, -0.5, 1.5, True, -1, STEPS, "0.5", [0.5]])
@pytest.mark.parametrize("restarts", [1, 2])
def test_bad_average_from_is_refused_before_training(bad, restarts):
    pyro.clear_param_store()
    guide = AutoKR(model, map="affine")
    with pytest.raises(ValueError, match="average_from"):
        fit(model, guide, Y, steps=STEPS, progress=False, average_from=bad, restarts=restarts)
    assert len(pyro.get_param_store()) == 0  # nothing was built or trained


def test_no_warning_without_averaging():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _run(callback=lambda step, record: step == 9)


def test_the_example_flag_runs_with_smoke():
    path = Path(__file__).resolve().parents[1] / "examples" / "hierarchical_sparse.py"
    spec = importlib.util.spec_from_file_location("hierarchical_sparse_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--smoke", "--average-from", "0.5"])
    assert out["seconds"] > 0 and abs(out["mu"]) < 10
