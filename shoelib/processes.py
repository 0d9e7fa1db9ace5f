"""Child processes that end with their parent.

A SIGKILL cannot be caught, so a killed runner cannot stop its notebook kernel, nor a killed
kernel its image workers: without help they keep rendering and writing into the run folder.
On Linux each such child asks the operating system (prctl PR_SET_PDEATHSIG) to be killed when
its parent ends; on other systems this is a no-op, and the runner's SIGTERM/SIGINT handling
and ipykernel's own parent polling are all there is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Loaded here, not in the child: a child forked from a threaded parent must not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a child process: it is killed when `parent_pid` ends.

    Args:
        parent_pid: the parent's pid, read in the parent before the child started (if the
            parent is already gone by now, no signal would ever come: the child ends itself).
    """
    if _LIBC is None:
        return
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
