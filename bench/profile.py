"""Where the time goes: ``py-spy record`` on the server's process tree during a scenario, and a summary
of the samples grouped by library (the leaf frame's: "self"; any frame on the stack: "inclusive").

py-spy skips idle threads by default, so the samples are CPU spent in Python (a worker blocked on a
socket, waiting for PostgreSQL or for a request, is not sampled). It needs root or ptrace permission.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

FRAME_FILE = re.compile(r"\(([^()]*?)(?::\d+)?\)$")  # "function (path/to/file.py:123)"
GROUPS = [  # by the frame's file, relative to its sys.path entry; the first prefix that matches wins
    ("psycopg", ("psycopg",)),
    ("Django ORM", ("django/db/",)),
    ("DRF", ("rest_framework/",)),
    ("prometheus", ("django_prometheus/", "prometheus_client/")),
    ("Django core", ("django/", "asgiref/")),
    ("gunicorn", ("gunicorn/",)),
    ("booking_site code", ("config/", "core/", "web/", "ops/", "reservations/", "events/", "slots/", "manage.py")),
]


def group_of(frame: str) -> str:
    match = FRAME_FILE.search(frame)
    path = match.group(1) if match else frame
    for name, prefixes in GROUPS:
        if path.startswith(prefixes):
            return name
    top = path.split("/", 1)[0].removesuffix(".py").strip("<>").removeprefix("frozen ")
    return "Python stdlib" if top in sys.stdlib_module_names else "other libraries"


def parse_raw(text: str) -> Counter:
    """py-spy's ``--format raw`` (collapsed stacks): ``frame;frame;...;leaf count`` per line."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summarize(stacks: Counter, *, top: int = 12) -> str:
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [f for f in stack.split(";") if "(" in f]  # drop the process and thread labels
        if not frames:
            continue
        own[group_of(frames[-1])] += count
        for name in {group_of(f) for f in frames}:
            inclusive[name] += count
        leaves[frames[-1]] += count
    lines = [f"{total} samples", "", "| library | self | inclusive |", "|---|---:|---:|"]
    ranked = sorted(inclusive, key=lambda name: (-own[name], -inclusive[name]))
    lines += [f"| {name} | {own[name] / total:.0%} | {inclusive[name] / total:.0%} |" for name in ranked]
    lines += ["", "| top leaf frames | self |", "|---|---:|"]
    lines += [f"| `{frame}` | {n / total:.1%} |" for frame, n in leaves.most_common(top)]
    return "\n".join(lines)


def record(bench, scenarios: list, folder: Path) -> None:
    """Run each scenario once more with py-spy attached to the whole server tree (not counted in the
    figures), and write ``<scenario>.txt`` (collapsed stacks) and ``summary.md`` to ``folder``."""
    py_spy = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for scenario in scenarios:
        output = folder / f"{scenario.name}.txt"
        command = [py_spy, "record", "--pid", str(bench.server.process.pid), "--subprocesses", "--rate", "200"]
        command += ["--format", "raw", "--output", str(output), "--nonblocking"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1)  # let it attach to every process
        result = scenario.run(bench, scenario.name)
        spy.send_signal(signal.SIGINT)
        _, errors = spy.communicate(timeout=60)
        if not output.exists():
            raise RuntimeError(f"py-spy wrote no profile ({spy.returncode}): {errors[-1000:]}")
        summary = summarize(parse_raw(output.read_text()))
        sections.append(f"## {scenario.name} ({result.rps or 0:.0f} req/s while profiled)\n\n{summary}\n")
        print(f"profiled {scenario.name}: {output}")
    (folder / "summary.md").write_text("\n".join(sections))
    print("\n".join(sections))
