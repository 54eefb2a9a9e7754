"""pyro_kr.progress: the plain-line progress of logs and CI, and the switch to tqdm."""

from __future__ import annotations

from pyro_kr.progress import LineProgress, progress_bar


def test_line_progress_prints_every_tenth_and_where_the_work_stopped(capsys):
    bar = LineProgress(100, 0, desc="polish", unit="it")
    bar.set_postfix({"loss": "1.5"})
    bar.update(25)  # 10 % and 20 % crossed in one update
    bar.update(2)
    bar.close()  # stopped at 27: one last line
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == ["10/100", "20/100", "27/100"]
    assert all(line.startswith("polish: it ") and "loss=1.5" in line for line in lines)
    full = LineProgress(10, 0)
    full.update(10)
    full.close()  # ended on a line: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("fit: step 10/10")


def test_progress_bar_off_or_in_logs(capsys):
    off = progress_bar(False, 10)
    off.update(10)
    off.close()
    assert capsys.readouterr().err == ""
    assert isinstance(progress_bar(True, 10), LineProgress)  # stderr is not a terminal here
