"""Atomic writes: a target is either the old content or the complete new one."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from shoelib.io import atomic_path, read_json, write_json


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temp_keeps_suffix_and_result_has_normal_permissions(tmp_path):
    with atomic_path(tmp_path / "a" / "img.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path / "a"
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a" / "img.png").stat().st_mode) == 0o666 & ~umask


def test_json_round_trip_converts_numpy_and_keeps_order(tmp_path):
    obj = {"b": np.int64(3), "a": np.float32(0.5), "arr": np.arange(3), "p": tmp_path}
    write_json(tmp_path / "s.json", obj)
    assert read_json(tmp_path / "s.json") == {"b": 3, "a": 0.5, "arr": [0, 1, 2], "p": str(tmp_path)}
    assert list(read_json(tmp_path / "s.json")) == ["b", "a", "arr", "p"]
