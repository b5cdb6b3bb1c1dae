"""Results: rows of repeated measurements, the printed table, JSON and Markdown.

A Row compares a subject (zkfsd, or the mount) with a reference (Apache ZooKeeper, or tmpfs):
each side holds every run's value; the table shows median and spread (min-max) and the ratio of
medians subject/reference. A side that could not be measured is empty and the row says why.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    section: str
    metric: str
    unit: str
    subject: str = "zkfsd"
    reference: str = "zookeeper"
    a: list[float] = field(default_factory=list)   # subject's runs
    b: list[float] = field(default_factory=list)   # reference's runs
    better: str = ""                               # "higher" | "lower" | ""
    note: str = ""

    @staticmethod
    def stats(values: list[float]) -> dict | None:
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "runs": len(values)}

    @property
    def ratio(self) -> float | None:
        a, b = self.stats(self.a), self.stats(self.b)
        if not a or not b or not b["median"]:
            return None
        return a["median"] / b["median"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["subject_stats"] = self.stats(self.a)
        d["reference_stats"] = self.stats(self.b)
        d["ratio"] = self.ratio
        return d


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.meta: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z")}

    def row(self, section: str, metric: str, unit: str, **kw) -> Row:
        """The row (section, metric), created on first use."""
        for r in self.rows:
            if r.section == section and r.metric == metric:
                return r
        r = Row(section, metric, unit, **kw)
        self.rows.append(r)
        return r

    def add(self, section: str, metric: str, unit: str, side: str, value: float | None,
            note: str = "", **kw) -> Row:
        """Append one run's value to side "a" (subject) or "b" (reference)."""
        r = self.row(section, metric, unit, **kw)
        if value is not None:
            (r.a if side == "a" else r.b).append(float(value))
        if note and note not in r.note:
            r.note = f"{r.note}; {note}" if r.note else note
        return r

    def note(self, section: str, metric: str, unit: str, note: str, **kw) -> Row:
        return self.add(section, metric, unit, "a", None, note, **kw)

    # --- output --------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"meta": self.meta, "rows": [r.to_json() for r in self.ordered()]}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def ordered(self) -> list[Row]:
        """Rows grouped by section (sections in order of first appearance)."""
        order: dict[str, int] = {}
        for r in self.rows:
            order.setdefault(r.section, len(order))
        return sorted(self.rows, key=lambda r: order[r.section])  # stable within a section

    def _lines(self) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for r in self.ordered():
            out.append((r.section, [r.metric, r.unit, f"{r.subject}: {_cell(r.a)}",
                                    f"{r.reference}: {_cell(r.b)}", _ratio(r), r.note]))
        return out

    def table(self) -> str:
        lines = self._lines()
        if not lines:
            return "(no results)\n"
        widths = [max(len(cols[i]) for _s, cols in lines) for i in range(5)]
        text, section = [], None
        for sec, cols in lines:
            if sec != section:
                section = sec
                text.append(f"\n== {sec}")
            cells = [cols[0].ljust(widths[0]), cols[1].ljust(widths[1]),
                     cols[2].ljust(widths[2]), cols[3].ljust(widths[3]), cols[4].rjust(widths[4])]
            text.append("  ".join(cells) + (f"  ({cols[5]})" if cols[5] else ""))
        return "\n".join(text).lstrip("\n") + "\n"

    def markdown(self) -> str:
        m = self.meta
        machine = m.get("machine", {})
        out = [f"## Benchmarks, {m.get('date', '')}", "",
               f"Mode: `{m.get('mode', '')}`; runs per figure: {m.get('runs', '?')}, "
               "median and (min–max); ratio = median of subject / median of reference "
               "(zkfsd/ZooKeeper, mount/tmpfs).", "",
               "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), ""]
        section = None
        for r in self.ordered():
            if r.section != section:
                section = r.section
                out += ["", f"### {section}", "",
                        f"| metric | unit | {r.subject} | {r.reference} | ratio | note |",
                        "| --- | --- | ---: | ---: | ---: | --- |"]
            out.append(f"| {r.metric} | {r.unit} | {_cell(r.a)} | {_cell(r.b)} | {_ratio(r)} "
                       f"| {r.note} |")
        return "\n".join(out) + "\n"


def _fmt(x: float) -> str:
    ax = abs(x)
    if ax >= 1000:
        return f"{x:.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(values: list[float]) -> str:
    s = Row.stats(values)
    if not s:
        return "n/a"
    if s["runs"] == 1:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} ({_fmt(s['min'])}–{_fmt(s['max'])})"


def _ratio(r: Row) -> str:
    ratio = r.ratio
    return "-" if ratio is None else f"{ratio:.2f}x"
