"""Smoke tests of the ``pyro-kr`` command (in-process through ``pyro_kr.bench.cli.main``)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pyro_kr.bench.problems as problems
from pyro_kr.bench import cli, methods, reference, runner

TINY = ["--steps", "20", "--seeds", "1", "--num-draws", "300", "--metric-n", "150",
        "--psis-draws", "300", "--no-progress"]


def test_list_names_problems_and_methods(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("lotka_volterra", "linear_gaussian", "auto_normal", "auto_spline", "nuts"):
        assert name in out


def test_unknown_problem_lists_valid_names(capsys):
    assert cli.main(["bench", "no_such_problem"]) == 2
    err = capsys.readouterr().err
    assert "unknown problem 'no_such_problem'" in err and "lotka_volterra" in err
    assert cli.main(["reference", "no_such_problem"]) == 2
    assert "valid names" in capsys.readouterr().err


def test_unknown_method_lists_valid_names(capsys, tmp_path):
    code = cli.main(["bench", "banana", "--methods", "auto_normal,bogus", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "auto_mvn" in err
    assert not (tmp_path / "results.json").exists()


def test_unwritable_out_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(runner, "load_reference", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert cli.main(["bench", "banana", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_nonpositive_numbers_are_refused(capsys):
    assert cli.main(["bench", "banana", "--steps", "0"]) == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_version(capsys):
    import pyro_kr

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-kr {pyro_kr.__version__}"


def test_bad_observation_exits_2_with_one_message(tmp_path, capsys):
    code = cli.main(["bench", "banana", "--observation", "5", "--out", str(tmp_path / "run")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "pyro-kr: error: --observation: banana has observations 0..0, got index 5"
    )
    assert "Traceback" not in captured.out + captured.err
    assert cli.main(["reference", "banana", "--observation", "-1"]) == 2
    assert capsys.readouterr().err.count("error") == 1


def test_bad_observation_from_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "pyro_kr.bench.cli", "bench", "banana",
                           "--observation", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("got index 5") == 1


def test_bench_smoke_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    # banana: the smallest problem (2 parameters), with its shipped reference
    code = cli.main(["bench", "banana", "--methods", "auto_normal,auto_mvn",
                     "--out", str(out), *TINY])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["problem"] == "banana"
    assert results["reference"]["source"] == "problem.reference"
    assert list(results["methods"]) == ["auto_normal", "auto_mvn"]
    for entry in results["methods"].values():
        assert entry["summary"]["runs"] == 1
        assert math.isfinite(entry["summary"]["w2"])
    assert set(results["noise_floor"]) == set(results["config"]["metrics"])
    assert results["config"]["particles"] == 8  # the default budget, the same for both
    for entry in results["methods"].values():
        assert entry["runs"][0]["particles"] == 8 and entry["runs"][0]["steps"] == 20
    body = (out / "report.md").read_text()
    assert "| auto_normal | 1 |" in body and "*noise floor*" in body
    assert body.index("- **auto_normal**:") < body.index("| method |")
    assert "trained for 20 Adam steps x 8 ELBO particles" in body
    for png in ("metrics.png", "loss.png", "pair_auto_normal.png"):
        assert (out / png).exists() and f"]({png})" in body
    printed = capsys.readouterr().out
    assert "wrote" in printed and "20 steps x 8 particles" in printed
    assert "- **auto_mvn**:" in printed


def test_ctrl_c_exits_130_and_keeps_finished_results(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(methods._REGISTRY, "auto_mvn", interrupted)
    out = tmp_path / "run"
    code = cli.main(["bench", "linear_gaussian", "--methods", "auto_normal,auto_mvn",
                     "--out", str(out), "--no-plots", *TINY])
    assert code == 130
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and list(results["methods"]) == ["auto_normal"]
    assert "auto_normal" in (out / "report.md").read_text()
    assert not list(out.glob("*.tmp*"))
    assert "interrupted" in capsys.readouterr().err


def test_reference_command_shows_settings_and_convergence(monkeypatch, capsys):
    from pyro_kr.bench.reference import _io

    def fake_nuts(problem, observation, **kwargs):
        idata = _io.from_dict({"theta1": np.zeros((4, 10)), "theta2": np.zeros((4, 10))})
        _io.set_attrs(idata, {"max_rhat": 1.002, "min_ess_bulk": 3456.0, "wall_time_s": 12.5,
                              "ess_per_s": 276.5, "setting_method": kwargs["method"],
                              "setting_tune": kwargs["tune"]})
        return idata

    monkeypatch.setattr(reference, "nuts", fake_nuts)
    assert cli.main(["reference", "banana", "--draws", "10", "--method", "demetropolisz"]) == 0
    out = capsys.readouterr().out
    assert "1.0020" in out and "3456" in out and "12.5 s" in out and "demetropolisz" in out
    assert "4 x 10" in out


def test_reference_refusal_exits_1(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise reference.ReferenceQualityError("banana reference run refused: max R-hat 1.2")

    monkeypatch.setattr(reference, "nuts", refuse)
    assert cli.main(["reference", "banana"]) == 1
    assert "max R-hat 1.2" in capsys.readouterr().err


def test_bench_without_any_reference_says_how_to_build_one(tmp_path, monkeypatch, capsys):
    def no_reference(self, index=0, **kwargs):
        raise ValueError("no shipped reference")

    monkeypatch.setenv(reference.ENV_VAR, str(tmp_path / "empty_cache"))
    monkeypatch.setattr(type(problems.get("banana")), "reference", no_reference)
    code = cli.main(["bench", "banana", "--out", str(tmp_path / "run"), *TINY])
    assert code == 1
    assert "pyro-kr reference banana" in capsys.readouterr().err


def test_joint_sample_tasks_explain_themselves(capsys):
    assert cli.main(["reference", "checkerboard"]) == 0
    assert "generator" in capsys.readouterr().out
    assert cli.main(["bench", "checkerboard"]) == 2
    assert "without a likelihood" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("pyro-kr") is None, reason="console script not installed")
def test_console_script_is_installed():
    proc = subprocess.run(["pyro-kr", "bench", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "valid names" in proc.stderr


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "pyro_kr.bench.cli", "list"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "auto_normal" in proc.stdout
