from __future__ import annotations

import pytest

from pyro_kr._atomic import atomic_path


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupt_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_suffix_is_kept_for_writers_that_read_it(tmp_path):
    with atomic_path(tmp_path / "draws.npz", suffix=".tmp.npz") as tmp:
        assert tmp.name.endswith(".tmp.npz")
        tmp.write_bytes(b"x")
    assert (tmp_path / "draws.npz").read_bytes() == b"x"


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.txt"
        with atomic_path(fresh) as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        with atomic_path(kept) as tmp:
            tmp.write_text("new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(umask)
