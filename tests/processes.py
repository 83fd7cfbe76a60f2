"""Stopping a server a test started in its own process group (``start_new_session=True``), and finding what
of a supervisor's programs is left."""

import os
import signal
import subprocess
from collections.abc import Mapping

from ops.supervisor import group_members


def stop_group(process: subprocess.Popen, signum: int, grace: float) -> None:
    """Send ``signum`` to the process's group and wait up to ``grace`` seconds; then kill what is left."""
    os.killpg(process.pid, signum)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def left_running(groups: Mapping[str, int]) -> dict[str, list[int]]:
    """Of named process groups (a supervisor's programs: each its first process's id), those with a process
    still running, and those processes."""
    return {name: members for name, pgid in groups.items() if (members := group_members(pgid))}
