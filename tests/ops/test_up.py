"""What `make run` (manage.py up) prints: its URLs once they answer, its own lines labelled as its own (the
demo data it loads: tests/demo)."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from ops import embedded


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_up_prints_its_urls_once_the_web_server_answers_and_labels_its_stop_lines_up():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": embedded.database_url(settings.DATABASES["default"]),
        "LOG_LEVEL": "ERROR",
        "PYTHONUNBUFFERED": "1",
    }
    up = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--no-demo", "--port", str(port)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in up.stdout or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("admin     http" in line for line in seen) and time.monotonic() < deadline:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        admin = re.search(r"admin\s+(http://\S+)", seen[-1])
        assert admin is not None, "".join(seen)

        answer = urllib.request.urlopen(admin.group(1), timeout=5)  # at once: printed means answering

        assert answer.status == 200
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    reader.join(10)  # to the end of its output
    while not lines.empty():
        seen.append(lines.get())
    labels = {match.group(1) for line in seen if (match := re.match(r"\d\d:\d\d:\d\d (\S+)\s+\|", line))}
    assert "cluster" not in labels and labels >= {"up", "web", "worker", "beat"}
    assert any(re.match(r"\S+ up\s+\| stopping 3 programs", line) for line in seen), "".join(seen[-20:])
