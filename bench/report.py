"""The report: medians over runs, one table row per scenario, the raw results as JSON, the plot."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.stats import median

CPU_GROUPS = ("server", "postgres", "client")


@dataclass
class Summary:
    """One scenario over all its runs: medians of the figures, statuses and errors added up."""

    scenario: str
    kind: str
    runs: int
    rps: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    statuses: dict[int, int]
    errors: int
    cpu_ms: dict[str, float | None]
    ceiling_fraction: float | None
    extra: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def summarize(measurements: list) -> list[Summary]:
    by_scenario: dict[str, list] = defaultdict(list)
    for m in measurements:
        by_scenario[m.scenario].append(m)
    summaries = []
    for name, runs in by_scenario.items():
        statuses: Counter = Counter()
        for m in runs:
            statuses.update(m.statuses)
        outcomes: Counter = Counter()
        for m in runs:
            outcomes.update(m.extra.get("outcomes", {}))
        numeric_extra = {
            key: median([m.extra.get(key) for m in runs])
            for key, value in runs[0].extra.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        summaries.append(
            Summary(
                scenario=name,
                kind=runs[0].kind,
                runs=len(runs),
                rps=median([m.rps for m in runs]),
                p50_ms=median([m.p50_ms for m in runs]),
                p95_ms=median([m.p95_ms for m in runs]),
                p99_ms=median([m.p99_ms for m in runs]),
                statuses=dict(sorted(statuses.items())),
                errors=sum(m.errors for m in runs),
                cpu_ms={group: median([m.cpu_ms.get(group) for m in runs]) for group in CPU_GROUPS},
                ceiling_fraction=median([m.extra.get("ceiling_fraction") for m in runs]),
                extra={**numeric_extra, "outcomes": dict(outcomes)} if outcomes else numeric_extra,
                failures=[failure for m in runs for failure in m.failures],
            )
        )
    return summaries


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _statuses(statuses: dict[int, int]) -> str:
    return " ".join(f"{status}:{n}" for status, n in statuses.items()) or "-"


def table(summaries: list[Summary]) -> str:
    """The load scenarios, then the expiry sweep (holds, not requests)."""
    header = ["scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "statuses (all runs)", "errors"]
    header += ["CPU ms/req server", "postgres", "client", "of ceiling"]
    rows = [header]
    for s in summaries:
        if s.kind in ("sweep", "scale", "onsale"):
            continue
        fraction = "-" if s.ceiling_fraction is None or s.kind == "read" else f"{s.ceiling_fraction:.0%}"
        rows.append(
            [s.scenario, _number(s.rps, 0), _number(s.p50_ms), _number(s.p95_ms), _number(s.p99_ms)]
            + [_statuses(s.statuses), str(s.errors)]
            + [_number(s.cpu_ms.get(group), 2) for group in CPU_GROUPS]
            + [fraction]
        )
    text = grid(rows) if len(rows) > 1 else ""
    sweeps = [s for s in summaries if s.kind == "sweep"]
    if sweeps:
        rows = [["expiry sweep", "holds/s", "job wall s", "job start-up s", "peak RSS MB", "idle RSS MB"]]
        rows[0] += ["CPU ms/hold job", "postgres"]
        for s in sweeps:
            e = s.extra
            figures = [e.get("wall_s"), e.get("startup_s"), e.get("peak_mb"), e.get("idle_peak_mb")]
            per_hold = [s.cpu_ms.get("client"), s.cpu_ms.get("postgres")]
            rows.append(
                [
                    s.scenario,
                    _number(e.get("holds_per_s"), 0),
                    *map(_number, figures),
                    *(_number(c, 3) for c in per_hold),
                ]
            )
        text = "\n\n".join(part for part in (text, grid(rows)) if part)
    sales = [s for s in summaries if s.kind == "onsale"]
    if sales:
        rows = [["on-sale", "buyers", "seats sold", "admitted/min", "joined in s", "sold out in s"]]
        rows[0] += ["last buyer waited s", "median wait s", "req/s", "p99 ms", "errors"]
        for s in sales:
            e = s.extra
            rows.append(
                [s.scenario]
                + [_number(e.get(k), 0) for k in ("buyers", "sold", "rate_per_min")]
                + [_number(e.get(k)) for k in ("joined_s", "sold_out_s", "last_buyer_wait_s", "median_wait_s")]
                + [_number(s.rps, 0), _number(s.p99_ms), str(s.errors)]
            )
        text = "\n\n".join(part for part in (text, grid(rows)) if part)
    scaled = [s for s in summaries if s.kind == "scale"]
    if scaled:
        rows = [["through HAProxy", "web processes", "req/s", "p99 ms", "errors", "CPU ms/req web+HAProxy"]]
        rows[0] += ["of it HAProxy", "postgres", "client"]
        for s in scaled:
            rows.append(
                [s.scenario, _number(s.extra.get("web"), 0), _number(s.rps, 0), _number(s.p99_ms), str(s.errors)]
                + [_number(c, 2) for c in (s.cpu_ms.get("server"), s.extra.get("haproxy_ms"))]
                + [_number(s.cpu_ms.get(group), 2) for group in ("postgres", "client")]
            )
        text = "\n\n".join(part for part in (text, grid(rows)) if part)
    return text


def grid(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 or not cell[:1].isdigit() else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, *, machine: dict, measurements: list, summaries: list[Summary]) -> None:
    document = {
        "machine": machine,
        "runs": [asdict(m) for m in measurements],
        "medians": [asdict(s) for s in summaries],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def plot(path: Path, summaries: list[Summary], *, title: str) -> None:
    """Two panels: req/s and p99 per scenario (the sweep is in holds/s, so it is left out)."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # the settings' root logger says INFO
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in summaries if s.kind not in ("sweep", "scale", "onsale") and s.rps is not None]
    names = [s.scenario for s in shown]
    colours = {"ceiling": "#7f7f7f", "write": "#1f77b4", "hot": "#d62728", "read": "#2ca02c"}
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(shown) + 1.8), sharey=True)
    positions = list(range(len(shown)))
    style = {
        "color": [colours.get(s.kind, "#333") for s in shown],
        "hatch": ["//" if ":" in s.scenario else "" for s in shown],  # a seed's run of our scenario
        "edgecolor": "white",
    }
    left.barh(positions, [s.rps for s in shown], **style)
    left.set_xlabel("requests per second, log scale (ceiling: pgbench transactions per second)")
    left.set_xscale("log")
    right.barh(positions, [s.p99_ms or 0 for s in shown], **style)
    right.set_xlabel("p99 latency, ms, log scale")
    right.set_xscale("log")
    left.set_yticks(list(positions), names)
    left.invert_yaxis()
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
