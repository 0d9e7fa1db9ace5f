"""Safe files: atomic writes (a file is either absent or complete, so an interrupted run can
resume) and folder locks (two runs never write into the same folder at once)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file keeps the target's suffix, so libraries that pick a format from the
    extension (PIL, safetensors, pandas) still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files, and a writer may replace the file with its own 0600 one
        # (safetensors does): give the result the permissions a plain open() would.
        plain_permissions(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def plain_permissions(path: str | Path) -> None:
    """Set `path`'s mode to what a plain open() would create under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def remove_temp_files(*folders: str | Path) -> int:
    """Delete the temporary files that `atomic_path` left in these folders when a run was
    killed mid-write (.<stem>.<random>.tmp<suffix>); returns how many. Run it only while no
    other process writes there: their temporary files look the same."""
    n = 0
    for folder in folders:
        for tmp in Path(folder).glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """JSON with 2-space indent, keys in insertion order (counts stay largest first);
    numpy scalars and Paths are converted."""
    return write_text(path, json.dumps(obj, indent=2, default=_to_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def append_line(path: str | Path, line: str) -> Path:
    """Append one line to a log file in a single write, flushed to disk before returning.

    A crash can lose at most the line being written, never an earlier one. If the file does
    not end with a newline (a previous write was cut off), one is written first, so the new
    line never glues onto a broken one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.rstrip("\n").encode("utf-8") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        if os.fstat(fd).st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


class FolderInUseError(RuntimeError):
    """Another live process holds the lock of a folder this run would write."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder`'s lock for the block, or raise FolderInUseError naming the holder.

    The lock is an flock on `lock_path(folder)`, a file naming its holder (pid, host, start
    time) that exists only while a run holds it. The operating system drops an flock when
    its process ends, however it ends, so the file a killed run leaves behind is no lock:
    the next run takes it at once, with no stale-lock timeout.
    """
    folder = Path(folder)
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by {_describe_holder(holder)}; wait "
                                   "for it or stop it") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file between our open and flock: open anew
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: nobody may lock a file about to go
        os.close(fd)


def lock_path(folder: str | Path) -> Path:
    """The lock file of a folder: beside it, so that taking the lock creates nothing before
    a run has checked its inputs, and the folder holds only what the run writes."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} (started {holder['started']})"
    except (ValueError, KeyError, TypeError):  # the holder is between locking and writing
        return "another process"


@contextmanager
def shared_folder_lock(folder: str | Path, state: Any) -> Iterator[None]:
    """`folder_lock` for a run of several processes (accelerate `PartialState` or
    `Accelerator` as `state`): the main process holds the lock for all of them, and if it is
    taken every process raises the same FolderInUseError, so none waits at a barrier for a
    main process that has given up."""
    with ExitStack() as stack:
        error = None
        if state.is_main_process:
            try:
                stack.enter_context(folder_lock(folder))
            except FolderInUseError as err:
                error = str(err)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error:
            raise FolderInUseError(error)
        yield
