"""Tests for pyro_kr.bench: the methods registry, the runner and the report writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr.bench import BenchConfig, methods, report, runner

PYRO_GUIDES = ["auto_normal", "auto_mvn", "auto_lowrank", "auto_iaf", "auto_spline"]


def test_registry_lists_pyro_guides_and_nuts():
    names = methods.names()
    for name in PYRO_GUIDES + ["nuts"]:
        assert name in names
    assert set(methods.default_names()) <= set(names)
    with pytest.raises(ValueError, match="valid names: auto_normal"):
        methods.get("no_such_method")
    with pytest.raises(TypeError, match="must be a str"):
        methods.get(3)


def test_autokr_entries_follow_the_api(monkeypatch):
    assert ("autokr_monotone" in methods.names()) == hasattr(pyro_kr, "AutoKR")
    monkeypatch.delattr(pyro_kr, "AutoKR", raising=False)
    assert not any(n.startswith("autokr") for n in methods.names())
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("autokr_monotone")


@pytest.mark.parametrize("name", PYRO_GUIDES, ids=PYRO_GUIDES)
def test_pyro_guide_methods_return_named_finite_draws(name):
    p = problems.get("eight_schools")  # scalar sites and a plated vector site
    res = methods.get(name)(p, p.observation(0), steps=5, seed=0, num_draws=50)
    assert res.failed is None
    assert set(res.draws) == set(p.param_names)
    for k, shape in p.param_shapes.items():
        assert res.draws[k].shape == (50, *shape)
        assert np.isfinite(res.draws[k]).all()
    assert (res.draws["tau"] > 0).all()  # constrained site
    assert len(res.loss) == 5 and len(res.neg_elbo) == 5 and res.wall_time_s > 0
    # the first step (tracing, set-up) is timed apart; s/step is the mean of the other four
    assert res.first_step_s > 0 and res.particles == methods.PARTICLES
    assert res.seconds_per_step == pytest.approx(
        (res.wall_time_s - res.first_step_s) / 4, rel=1e-6
    )


def test_methods_are_seeded():
    p = problems.get("banana")
    a = methods.get("auto_normal")(p, p.observation(0), steps=3, seed=1, num_draws=20)
    b = methods.get("auto_normal")(p, p.observation(0), steps=3, seed=1, num_draws=20)
    np.testing.assert_array_equal(a.draws["theta1"], b.draws["theta1"])
    assert a.loss == b.loss


def test_default_dtype_is_restored():
    p = problems.get("banana")
    methods.get("auto_iaf")(p, p.observation(0), steps=2, seed=0, num_draws=10)
    assert torch.get_default_dtype() == torch.float32


def test_write_json_atomic_leaves_no_partial_file(tmp_path):
    class Boom:
        pass

    runner.write_json_atomic({"a": 1}, tmp_path / "r.json")
    with pytest.raises(TypeError):
        runner.write_json_atomic({"a": Boom()}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_check_writable_refuses_a_file_as_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        runner.check_writable(blocker / "out")


SMALL = BenchConfig(steps=20, seeds=1, num_draws=300, metric_n=150, psis_draws=300)


def test_run_writes_results_after_each_method(tmp_path):
    p = problems.get("linear_gaussian")
    seen = []

    def on_result(name, record):
        on_disk = json.loads((tmp_path / "results.json").read_text())
        seen.append((name, list(on_disk["methods"])))

    res = runner.run(p, ["auto_normal", "auto_mvn"], tmp_path, config=SMALL, progress=False,
                     on_result=on_result)
    assert seen == [("auto_normal", ["auto_normal"]), ("auto_mvn", ["auto_normal", "auto_mvn"])]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["status"] == "complete" and res["status"] == "complete"
    for name in ("auto_normal", "auto_mvn"):
        run = on_disk["methods"][name]["runs"][0]
        assert run["w2"] > 0 and run["khat"] is not None and len(run["loss"]) == 20
        assert run["loss_steps"] == list(range(1, 21)) and run["particles"] == SMALL.particles
        assert (tmp_path / f"draws_{name}.npz").exists()
    # 20 steps of SVI are far from the exact posterior: above the noise floor
    floor = on_disk["noise_floor"]
    assert on_disk["methods"]["auto_normal"]["summary"]["w2"] > floor["w2"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_interrupt_keeps_finished_methods(tmp_path, monkeypatch):
    p = problems.get("linear_gaussian")
    real = methods.get("auto_normal")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(methods._REGISTRY, "auto_mvn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run(p, ["auto_normal", "auto_mvn"], tmp_path, config=SMALL, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["status"] == "interrupted"
    assert list(on_disk["methods"]) == ["auto_normal"]
    assert real is methods._REGISTRY["auto_normal"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_failed_run_is_counted_not_crashed(tmp_path, monkeypatch):
    def nan_method(problem, y, *, steps, seed, num_draws, progress=False, particles=1):
        return methods.MethodResult(
            draws={"theta": np.full((num_draws, 10), np.nan)}, wall_time_s=1.0,
            seconds_per_step=0.1, loss=[float("nan")],
        )

    monkeypatch.setitem(methods._REGISTRY, "auto_iaf", nan_method)
    res = runner.run(problems.get("linear_gaussian"), ["auto_iaf"], tmp_path, config=SMALL,
                     progress=False)
    summary = res["methods"]["auto_iaf"]["summary"]
    assert summary["failures"] == 1 and summary["w2"] is None
    assert "non-finite" in res["methods"]["auto_iaf"]["runs"][0]["failed"]


def test_crashing_method_is_a_failure_and_the_run_goes_on(tmp_path, monkeypatch):
    def crash(problem, y, *, steps, seed, num_draws, progress=False, particles=1):
        raise ValueError("Expected parameter loc to satisfy the constraint Real(), found nan")

    monkeypatch.setitem(methods._REGISTRY, "auto_iaf", crash)
    res = runner.run(problems.get("linear_gaussian"), ["auto_iaf", "auto_normal"], tmp_path,
                     config=SMALL, progress=False)
    assert res["methods"]["auto_iaf"]["summary"]["failures"] == 1
    assert res["methods"]["auto_iaf"]["runs"][0]["failed"].startswith("ValueError: Expected")
    after = res["methods"]["auto_normal"]["runs"][0]  # the next method still ran
    assert after["failed"] is None and after["w2"] > 0


def test_report_table_and_file(tmp_path):
    results = {
        "problem": "demo",
        "status": "complete",
        "config": {"steps": 10, "particles": 8, "seeds": 1, "num_draws": 100,
                   "metric_n_used": 50, "metrics": ["w2", "mmd2"]},
        "reference": {"source": "shipped", "num_draws": 1000},
        "noise_floor": {"w2": 0.1, "mmd2": 0.001},
        "methods": {"m1": {"runs": [{"seed": 0, "failed": "boom"}],
                           "summary": {"runs": 1, "failures": 1, "w2": 0.25, "mmd2": 0.01}}},
    }
    text = report.table(results)
    assert "| m1 | 1 | 1 |" in text and "*noise floor*" in text and "0.25" in text
    path = report.write_report(results, tmp_path, plots=False)
    body = path.read_text()
    assert "# pyro-kr bench: demo" in body and "m1 (seed 0): boom" in body
    assert "- **m1**: failed (1 of 1 run(s) failed; boom)" in body
    assert "10 Adam steps x 8 ELBO particles" in body


def test_every_svi_method_gets_the_same_particles_and_steps(monkeypatch):
    # Pyro's guides and AutoKR alike: the ELBO each method builds is asked for the same number
    # of particles, and fit runs the same number of steps.
    import pyro.infer

    import pyro_kr.objective.transport_elbo as transport

    seen = []
    for cls in (pyro.infer.Trace_ELBO, transport.TransportELBO):
        real = cls.__init__

        def spy(self, *args, _real=real, _cls=cls, **kwargs):
            _real(self, *args, **kwargs)
            if type(self) is _cls:  # TransportELBO's super().__init__ is not a second ELBO
                seen.append((_cls.__name__, self.num_particles, self.vectorize_particles))

        monkeypatch.setattr(cls, "__init__", spy)
    p = problems.get("banana")
    names = ["auto_normal", "auto_mvn", "autokr_affine", "autokr_monotone_elbo"]
    for name in names:
        res = methods.get(name)(p, p.observation(0), steps=3, seed=0, num_draws=10, particles=4)
        assert res.failed is None and len(res.loss) == 3 and res.particles == 4
    assert [n for _, n, _ in seen] == [4] * len(names) and all(v for *_, v in seen)
    assert {c for c, *_ in seen} == {"Trace_ELBO", "TransportELBO"}
    assert BenchConfig().particles == methods.PARTICLES == 8


def test_baselines_train_through_pyro_kr_fit(monkeypatch):
    calls = []
    real = pyro_kr.fit

    def spy(*args, **kwargs):
        calls.append(kwargs["steps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pyro_kr, "fit", spy)
    p = problems.get("banana")
    for name in ("auto_normal", "auto_iaf", "autokr_affine"):
        methods.get(name)(p, p.observation(0), steps=2, seed=0, num_draws=10)
    assert calls == [2, 2, 2]


def _demo(values, *, failures=None, sd=None, floor=0.05):
    return {
        "problem": "demo",
        "config": {"steps": 10, "particles": 8, "seeds": 1, "num_draws": 100,
                   "metric_n_used": 50, "metrics": ["w2"]},
        "reference": {"source": "shipped", "num_draws": 1000},
        "noise_floor": {"w2": floor},
        "methods": {
            m: {"runs": [{"seed": 0, "steps": 10, "failed": None,
                          "khat_high": bool((failures or {}).get(m)), "khat": 3.0,
                          "loss": [100.0 * (m == "bad") + 10.0 / (t + 1) for t in range(5)],
                          "loss_steps": [1, 3, 5, 7, 10]}],
                "summary": {"runs": 1, "failures": (failures or {}).get(m, 0), "w2": v,
                            "w2_sd": (sd or {}).get(m)}}
            for m, v in values.items()
        },
    }


def test_verdict_line_per_method():
    res = _demo({"a": 0.20, "b": 0.24, "c": 0.60, "bad": 40.0}, failures={"bad": 1})
    v = report.verdicts(res)
    assert {m: x for m, (x, _) in v.items()} == {
        "a": "best", "b": "within noise", "c": "worse", "bad": "failed"
    }
    assert "PSIS k-hat 3 > 1" in v["bad"][1] and "3x the best" in v["c"][1]
    # seed-to-seed spread widens "within noise": 0.60 - 0.20 <= 2 * hypot(0.2, 0.1) = 0.447
    v = report.verdicts(_demo({"a": 0.20, "c": 0.60}, sd={"a": 0.1, "c": 0.2}))
    assert v["c"][0] == "within noise"
    lines = report.verdict_lines(res)
    assert lines[0].startswith("- **a**: best (w2 0.2")


def test_report_opens_with_verdicts_and_budget(tmp_path):
    body = report.write_report(_demo({"a": 0.2, "bad": 40.0}, failures={"bad": 1}),
                               tmp_path, plots=False).read_text()
    head = body.split("| method |")[0]
    assert "- **a**: best" in head and "- **bad**: failed" in head
    assert "every SVI method (a, bad) trained for 10 Adam steps x 8 ELBO particles" in head


def test_failed_method_does_not_set_the_y_scale():
    pytest.importorskip("matplotlib")
    res = _demo({"a": 0.2, "b": 0.3, "bad": 40.0}, failures={"bad": 1})
    fig = report.metrics_figure(res)
    top = fig.axes[0].get_ylim()[1]
    assert 0.3 < top < 1.0  # set by a, b and the floor, not by the failed 40
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["a", "b", "bad (failed)"]
    assert any("40" in t.get_text() for t in fig.axes[0].texts)  # the clipped bar's value
    fig = report.loss_figure(res, smooth=1)
    ax = fig.axes[0]
    assert ax.get_ylim()[1] < 100.0  # the failed run's loss (> 100) is off the scale
    assert ax.get_xlabel() == "optimizer step"
    assert max(max(line.get_xdata()) for line in ax.lines) == 10  # real steps, not indices


def test_bad_observation_index_is_one_clear_error():
    p = problems.get("banana")
    with pytest.raises(ValueError, match="banana has observations 0..0, got index 5") as info:
        runner.load_reference(p, 5)
    assert info.value.__context__ is None  # not raised while handling another error


@pytest.mark.slow
def test_nuts_method_scores_near_the_noise_floor(tmp_path):
    # An exact sampler (NUTS on the Gaussian linear_gaussian posterior) must score at the
    # noise floor: this checks the whole fit -> draws -> metrics pipeline end to end.
    config = BenchConfig(steps=1, seeds=1, num_draws=2000, metric_n=1000, psis=False)
    res = runner.run(problems.get("linear_gaussian"), ["nuts"], tmp_path, config=config,
                     progress=False)
    run = res["methods"]["nuts"]["runs"][0]
    assert run["failed"] is None and run["max_rhat"] < 1.05 and run["wall_time_s"] > 0
    assert run["mean_error"] < 0.2 and run["sd_error"] < 0.2
    assert run["w2_standardized"] < 1.5 * run["w2_standardized_noise_floor"]
