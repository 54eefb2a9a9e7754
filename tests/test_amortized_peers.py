"""benchmarks/amortized_peers.py --smoke: runs with and without sbi (the 'peers' extra)."""

from __future__ import annotations

import json

import pytest
from _scripts import load_benchmark


def _load():
    return load_benchmark("amortized_peers.py", "amortized_peers_bench")


def test_smoke_without_sbi_skips_the_peers_with_a_clear_message(tmp_path, monkeypatch, capsys):
    bench = _load()
    real_import = bench.importlib.import_module

    def no_sbi(name, *args, **kwargs):
        if name == "sbi" or name.startswith("sbi."):
            raise ImportError("No module named 'sbi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(bench.importlib, "import_module", no_sbi)
    out = tmp_path / "peers.json"
    payload = bench.main(["--smoke", "--methods", "forward", "npe_maf", "npe_nsf",
                          "--out", str(out), "--plot-dir", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    assert "SKIP npe_maf, npe_nsf: sbi is not installed" in printed
    assert "SKIPPED npe_maf: sbi is not installed" in printed
    saved = json.loads(out.read_text())
    assert set(saved["skipped"]) == {"npe_maf", "npe_nsf"}
    # which code (and defaults) the run used: HEAD, "+dirty" with local library edits
    assert saved["git_commit"] is None or saved["git_commit"][:7].isalnum()
    assert [r["method"] for r in payload["rows"]] == ["forward"]
    row = payload["rows"][0]
    assert row["simulations"] == 200 and row["model_evaluations"] == 0
    for key in ("raw", "scaled_log"):  # both coordinates, each with its floor
        assert row["w2"][key]["mean"] > 0 and saved["floor_w2"][key]["mean"] > 0
    # unit-kernel MMD^2 in raw u, with its floor (reference vs reference: about zero)
    assert row["mmd2_unit_kernel"]["mean"] > 10 * abs(saved["floor_mmd2_unit_kernel"]["mean"])


def test_smoke_with_sbi_trains_npe_on_the_same_bank(tmp_path):
    pytest.importorskip("sbi")
    bench = _load()
    payload = bench.main(["--smoke", "--methods", "npe_maf", "forward", "hybrid",
                          "--sbc-datasets", "10", "--validation-fraction", "0.5",
                          "--out", str(tmp_path / "peers.json"),
                          "--plot-dir", str(tmp_path / "plots")])
    rows = {r["method"]: r for r in payload["rows"]}
    # hybrid continues the forward row's guide: its forward phase is that row's
    assert rows["hybrid"]["continued_forward_row"] and rows["forward"]["steps"] == 3
    assert rows["hybrid"]["steps"] == rows["forward"]["steps"] + 3
    assert rows["forward"]["train_simulations"] == rows["forward"]["validation_simulations"] == 100
    for method in ("forward", "hybrid", "npe_maf"):  # SBC and coverage of KR and sbi rows
        cal = rows[method]["calibration"]
        assert len(cal["p_values"]) == 4 and set(cal["joint_coverage"]) == {"0.50", "0.90", "0.95"}
        assert cal["names"] == ["alpha", "beta", "gamma", "delta"]
    assert "error" not in rows["npe_maf"], rows["npe_maf"]
    # hybrid: the bank, then 3 reverse steps of a fresh batch of 32 y (smoke batch size)
    assert rows["npe_maf"]["simulations"] == rows["hybrid"]["simulations"] - 3 * 32 == 200
    assert rows["hybrid"]["model_evaluations"] == 3 * 32
    assert payload["skipped"] == {}
    assert (tmp_path / "plots" / "w2_vs_budget.png").exists()


def test_rows_with_another_validation_split_are_labelled_apart():
    # the paper's 10k + 10k and our default 90/10 split of the same 20,000 simulations: the
    # table and the plot (one point per label, budget and seed) must not merge them
    bench = _load()
    row = {"method": "forward", "forward_defaults": True, "budget": 20_000, "seed": 0}
    default = bench.label({**row, "validation_simulations": 2_000})
    paper = bench.label({**row, "validation_simulations": 10_000})
    assert default == "forward (defaults)"
    assert paper == "forward (defaults, 50% val.)"
    old = {"method": "hybrid", "budget": 20_000, "validation_simulations": 10_000}
    assert bench.label(old) == "hybrid (50% val.)"
    # rows without a split (sbi's own 10%, reverse without a bank) keep their plain name
    assert bench.label({"method": "npe_nsf", "budget": 20_000}) == "npe_nsf"
    assert bench.label({"method": "reverse", "budget": None}) == "reverse"


def test_float32_guides_are_labelled_apart_and_train_in_float32():
    # --kr-dtype float32: the networks are cast before the param store sees them, so the
    # parameters trained are float32; the rows get their own label (and plot series)
    import argparse

    import pyro
    import torch

    from pyro_kr.bench import problems

    bench = _load()
    row = {"method": "forward", "forward_defaults": True, "budget": 20_000, "seed": 0,
           "validation_simulations": 2_000}
    assert bench.label({**row, "kr_dtype": "float32"}) == "forward (defaults, float32)"
    assert bench.label(row) == "forward (defaults)"
    averaged = bench.label({**row, "average_from": 0.75})
    assert averaged == "forward (defaults, average from 0.75)"
    problem = problems.get("lotka_volterra")
    args = argparse.Namespace(depth=1, embedding_dim=4, hidden=[8], kr_dtype="float32")
    pyro.clear_param_store()
    guide = bench.make_guide(problem, args)
    guide.networks()
    assert {v.dtype for v in pyro.get_param_store().values()} == {torch.float32}
    assert guide.sample(problem.observation(0), 3)["alpha"].dtype == torch.float32


def test_library_guide_builds_amortizedkr_with_its_own_defaults_and_is_labelled_apart():
    # --library-guide: AmortizedKR(model, observed="y") with nothing else passed, so the
    # networks have exactly the parameter shapes of the library's default guide (not the
    # benchmark's narrower --hidden / --embedding-dim); its rows get their own label
    import argparse

    import pyro

    import pyro_kr
    from pyro_kr.bench import problems

    bench = _load()
    row = {"method": "forward", "forward_defaults": True, "budget": 20_000, "seed": 0,
           "validation_simulations": 2_000}
    assert bench.label({**row, "library_guide": True}) == "forward (defaults, library guide)"
    problem = problems.get("lotka_volterra")

    def shapes(guide):
        pyro.clear_param_store()
        guide.setup()
        guide.networks()
        return {k: tuple(v.shape) for k, v in pyro.get_param_store().items()}

    narrow = argparse.Namespace(depth=2, embedding_dim=16, hidden=[64, 64], kr_dtype="float64")
    wide = argparse.Namespace(**vars(narrow), library_guide=True)
    default = shapes(pyro_kr.AmortizedKR(problem.model, observed="y"))
    assert shapes(bench.make_guide(problem, wide)) == default
    assert shapes(bench.make_guide(problem, narrow)) != default
    # benchmarks/amortized.py (training and --timing-only) builds the same with the same flag
    single = load_benchmark("amortized.py", "amortized_bench")
    narrow.init_scale = wide.init_scale = 0.1
    assert shapes(single.lotka_volterra_guide(problem, wide)) == default
    assert shapes(single.lotka_volterra_guide(problem, narrow)) == shapes(
        bench.make_guide(problem, narrow))


def test_smoke_hybrid_rws_continues_forward_with_the_anchor_and_counts_evaluations(tmp_path):
    bench = _load()
    payload = bench.main(["--smoke", "--methods", "forward", "hybrid_rws",
                          "--hybrid-trace-at", "2", "--sbc-datasets", "10",
                          "--hybrid-reverse-lrs", "1e-3", "1e-4",
                          "--sbc-methods", "hybrid_rws", "--out", str(tmp_path / "p.json"),
                          "--plot-dir", str(tmp_path / "plots")])
    rows = {bench.label(r): r for r in payload["rows"]}
    hyb, fwd = rows["hybrid_rws"], rows["forward"]
    # one refinement per reverse lr, each from the forward row's guide, labelled apart
    other = rows["hybrid_rws (reverse lr 0.0001)"]
    assert (hyb["reverse_lr"], other["reverse_lr"]) == (1e-3, 1e-4)
    assert other["forward_steps"] == fwd["steps"] and other["w2"] != hyb["w2"]
    assert hyb["continued_forward_row"] and hyb["forward_steps"] == fwd["steps"] == 3
    assert (hyb["objective"], hyb["forward_weight"], hyb["num_particles"]) == ("rws", 1.0, 8)
    # 3 reverse steps of 32 // 8 = 4 datasets x 8 particles; the bank's 200 plus 3 x 4 y
    assert hyb["reverse_batch_size"] == 4 and hyb["model_evaluations"] == 3 * 4 * 8
    assert hyb["simulations"] == 200 + 3 * 4
    # the whole hybrid's CPU: the forward row's plus the reverse phase's (trace not counted)
    assert hyb["train_cpu_seconds"] == pytest.approx(
        fwd["train_cpu_seconds"] + hyb["reverse_cpu_seconds"])
    assert [t["reverse_step"] for t in hyb["trace"]] == [2] and hyb["trace"][0]["raw"] > 0
    assert "calibration" in hyb and "calibration" not in fwd  # --sbc-methods


def test_smoke_average_from_averages_the_forward_and_hybrid_rows(tmp_path):
    bench = _load()
    payload = bench.main(["--smoke", "--methods", "forward", "hybrid", "--average-from",
                          "0.5", "--out", str(tmp_path / "p.json"),
                          "--plot-dir", str(tmp_path / "plots")])
    rows = {r["method"]: r for r in payload["rows"]}
    assert rows["forward"]["average_from"] == 0.5
    assert rows["forward"]["averaged_steps"] == [2]  # smoke: 3 forward steps, from step 1
    assert rows["hybrid"]["averaged_steps"] == [2, 2]  # and 3 reverse steps
    assert rows["forward"]["average_val_loss"] is not None


def _write_test_observation(directory, index, observation, reference, accepted=True):
    import numpy as np

    record = {"index": index, "observation": [float(v) for v in observation],
              "accepted": accepted}
    (directory / f"obs{index}.json").write_text(json.dumps(record))
    if accepted:
        np.savez_compressed(directory / f"obs{index}.npz",
                            **{k: np.asarray(v, dtype=np.float32) for k, v in reference.items()})


def test_test_observations_score_each_method_like_the_benchmark_observation(tmp_path):
    """A held-out observation that *is* the benchmark observation, with its shipped reference,
    gets exactly the benchmark observation's scores; rejected observations are not used."""
    import pyro_kr.bench.problems as problems

    bench = _load()
    problem = problems.get("lotka_volterra")
    directory = tmp_path / "tests"
    directory.mkdir()
    reference = {k: v for k, v in problem.reference(0).items() if k in problem.param_names}
    _write_test_observation(directory, 3, problem.observation(0).tolist(), reference)
    _write_test_observation(directory, 5, problem.observation(0).tolist(), reference,
                            accepted=False)
    payload = bench.main(["--smoke", "--methods", "forward", "cot", "--out",
                          str(tmp_path / "p.json"), "--plot-dir", str(tmp_path / "plots"),
                          "--test-observations", str(directory)])
    for row in payload["rows"]:
        (test,) = row["test_observations"]  # the rejected observation 5 is left out
        assert test["index"] == 3
        for key in ("raw", "scaled_log"):
            assert test["w2"][key]["values"] == pytest.approx(row["w2"][key]["values"],
                                                              rel=1e-6)
            assert test["floor_w2"][key] == pytest.approx(payload["floor_w2"][key]["mean"],
                                                          rel=1e-6)


def test_test_observations_directory_without_accepted_observations_is_a_clear_error(tmp_path):
    from _scripts import load_benchmark as load

    module = load("lv_test_observations.py", "lv_test_observations_bench")
    with pytest.raises(FileNotFoundError, match="no accepted test observation"):
        module.load(tmp_path)


@pytest.mark.slow
def test_lv_test_observations_smoke_builds_a_loadable_reference(tmp_path):
    """PyMC NUTS on a held-out prior-predictive observation (2 chains x 50 draws, no gate)."""
    from _scripts import load_benchmark as load

    module = load("lv_test_observations.py", "lv_test_observations_bench")
    assert module.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    (test,) = module.load(tmp_path)
    _, u_star, y = module.test_pairs(8, 4242)
    assert test["index"] == 0 and test["observation"] == pytest.approx(y[0].tolist())
    assert set(test["reference"]) == {"alpha", "beta", "gamma", "delta"}
    assert all(v.shape == (100,) and (v > 0).all() for v in test["reference"].values())


def test_cot_defaults_pass_only_batch_seed_and_a_capped_validation_and_calibrate(
        tmp_path, monkeypatch):
    """``--cot-defaults``: COTFlowMatching.fit keeps its own coupling, steps, lr and schedule;
    the row is labelled apart and, like every row, calibrated with ``--sbc-datasets``."""
    import pyro_kr

    bench = _load()
    calls, real_fit = [], pyro_kr.COTFlowMatching.fit

    def short_fit(self, u, y, **kwargs):  # the defaults' 20,000 steps, cut for a unit test
        calls.append(kwargs)
        return real_fit(self, u, y, steps=4, validate_every=2, **kwargs)

    monkeypatch.setattr(pyro_kr.COTFlowMatching, "fit", short_fit)
    payload = bench.main(["--smoke", "--methods", "cot", "--cot-defaults",
                          "--cot-validation-max", "15", "--sbc-datasets", "10",
                          "--out", str(tmp_path / "p.json"), "--plot-dir", str(tmp_path / "pl")])
    (kwargs,) = calls
    assert set(kwargs) == {"batch_size", "validation", "progress", "seed"}
    assert kwargs["validation"] == 15  # 10 % of the 200 simulations, capped at 15
    (row,) = payload["rows"]
    assert row["cot_defaults"] and row["steps"] == 4 and row["validation_pairs"] == 15
    assert bench.label(row) == "cot (defaults)"
    cal = row["calibration"]
    assert cal["num_datasets"] == 10 and cal["names"] == ["alpha", "beta", "gamma", "delta"]
    assert all(0 <= p <= 1 for p in cal["p_values"])


def test_merge_withdraws_rows_by_label_with_the_reason_kept_in_the_file(tmp_path, capsys):
    bench = _load()
    run = tmp_path / "run.json"
    bench.main(["--smoke", "--methods", "forward", "cot", "--out", str(run),
                "--plot-dir", str(tmp_path / "plots")])
    merged = bench.main(["--merge", str(run), "--withdraw", "cot=trained on the wrong data",
                         "--out", str(tmp_path / "m.json"), "--plot-dir", str(tmp_path / "mp")])
    rows = {r["method"]: r for r in merged["rows"]}
    assert rows["cot"]["withdrawn"] == "trained on the wrong data"
    assert "withdrawn" not in rows["forward"] and "w2" in rows["cot"]  # kept, only marked
    assert "withdrawn: trained on the wrong data" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == merged["rows"]
    for bad, match in (("hybrid=x", "no row has that label"), ("cot", "LABEL=REASON")):
        with pytest.raises(ValueError, match=match):
            bench.main(["--merge", str(run), "--withdraw", bad, "--out",
                        str(tmp_path / "x.json"), "--plot-dir", str(tmp_path / "xp")])
