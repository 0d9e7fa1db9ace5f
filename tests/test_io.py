"""Atomic writes: a target is either the old content or the complete new one."""

from __future__ import annotations

import json
import os
import signal
import stat

import numpy as np
import pytest

from shoelib.io import (
    FolderInUseError,
    atomic_path,
    folder_lock,
    lock_path,
    read_json,
    remove_temp_files,
    write_json,
)


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


def test_a_writer_that_replaces_the_temp_file_still_leaves_normal_permissions(tmp_path):
    # safetensors writes its own 0600 file in place of the one it is given
    with atomic_path(tmp_path / "lora.safetensors") as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "lora.safetensors").stat().st_mode) == 0o666 & ~umask


def test_json_round_trip_converts_numpy_and_keeps_order(tmp_path):
    obj = {"b": np.int64(3), "a": np.float32(0.5), "arr": np.arange(3), "p": tmp_path}
    write_json(tmp_path / "s.json", obj)
    assert read_json(tmp_path / "s.json") == {"b": 3, "a": 0.5, "arr": [0, 1, 2], "p": str(tmp_path)}
    assert list(read_json(tmp_path / "s.json")) == ["b", "a", "arr", "p"]


def test_folder_lock_refuses_a_second_process_and_frees_with_a_killed_holder(
        tmp_path, lock_in_other_process):
    holder = lock_in_other_process(tmp_path / "run")
    with pytest.raises(FolderInUseError) as err:
        with folder_lock(tmp_path / "run"):
            pass
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by pid {holder.pid} on ")
    assert "(started " in message and message.endswith("; wait for it or stop it")
    assert "\n" not in message

    holder.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays, naming a dead pid
    holder.wait()
    assert json.loads(lock_path(tmp_path / "run").read_text())["pid"] == holder.pid
    with folder_lock(tmp_path / "run") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # released, and nothing created


def test_remove_temp_files_clears_what_a_killed_write_leaves_and_nothing_else(tmp_path):
    left = []
    for folder in (tmp_path, tmp_path / "train"):
        with pytest.raises(KeyboardInterrupt):
            with atomic_path(folder / "000001.png") as tmp:
                left.append(tmp.name)
                raise KeyboardInterrupt
        (folder / left[-1]).write_bytes(b"half a png")  # a kill skips atomic_path's cleanup
        (folder / "000000.png").write_bytes(b"done")
    (tmp_path / ".gitignore").write_text("*")
    assert remove_temp_files(tmp_path, tmp_path / "train") == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        ".gitignore", "000000.png", "000000.png", "train"]
