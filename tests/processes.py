"""Stopping a server a test started in its own process group (``start_new_session=True``)."""

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, signum: int, grace: float) -> None:
    """Send ``signum`` to the process's group and wait up to ``grace`` seconds; then kill what is left."""
    os.killpg(process.pid, signum)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
