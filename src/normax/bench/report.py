"""Show the results: one table per kernel family, the results-file check, the speed-up plot."""

from __future__ import annotations

import math
import os

from .._backend import BACKENDS

FAMILY_TITLES = {
    "batch_norm": "Batch norm (train = training forward, infer = inference forward, backward)",
    "softmax": "Softmax, log-softmax and fused softmax cross-entropy (loss + gradient)",
    "optim": "Fused optimizer updates (one step over every array)",
    "tune": "Tuning: time per trial of a random search beyond its objective",
}
NORMAX = ("c", "numba")  # rows whose speed-up below 1 is a regression to flag
REGRESSION = " ▼"
COLUMNS = (
    "kernel",
    "layout",
    "shape",
    "dtype",
    "backend",
    "median",
    "IQR",
    "vs NumPy",
    "vs torch",
    "GB/s",
    "roofline",
)
LEGEND = (
    "median: time per call (per trial for tuning); IQR: interquartile range of the samples "
    "over the median; vs NumPy / vs torch: speed-up (their median over this median), ▼ marks "
    "a normax backend slower than the baseline; GB/s: minimum bytes moved / median; roofline: "
    "that over the copy bandwidth: of a copy timed in turn with the contenders where the data "
    "is larger than the last-level cache, of the run's probe elsewhere (* the data fits in the "
    "cache, so the memory roofline does not bind); † timed alone in a process of its own, "
    "because in turn with the other contenders it was slower beyond the noise; page faults per "
    "call: minor page faults of the process while each contender ran, listed for the cases "
    "where one paid at least one per call (per trial for tuning); a first touch of fresh memory "
    "(an output its allocator takes anew from the system at each call) is part of its time."
)
FAULTS_SHOWN = 1.0  # minor page faults per call from which a case's counts are listed


def format_time(seconds: float | None) -> str:
    """``1.23 ms`` style, three significant digits."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(value: float) -> str:
    """A speed-up as people read it: two decimals, but never "0.00x" for a tiny one."""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def format_speedup(value: float | None, name: str, baseline: str) -> str:
    if name == baseline:
        return "base"
    if value is None:
        return "-"
    flag = REGRESSION if value < 1 and name in NORMAX else ""
    return f"{format_ratio(value)}{flag}"


def case_line(case: dict, index: int, total: int) -> str:
    """One line for a finished case: every contender's median (and speed-up over NumPy).

    Printed as each case finishes, so a redirected run shows its progress. "alone" is the
    median of the contender timed in a process of its own; when it is faster alone beyond the
    noise, that is the figure, and the in-process one ("in turn") is shown beside it.
    """
    head = (
        f"[{index:{len(str(total))}d}/{total}] {case['kernel']} {case['layout']} "
        f"{'x'.join(map(str, case['shape']))} {case['dtype']}:"
    )
    if case["status"] != "ok":
        return f"{head} {case['status']}: {case['note']}"
    parts = []
    for e in case["contenders"]:
        if e.get("median_s") is None:
            parts.append(f"{e['name']} FAILED ({e.get('error') or 'not timed'})")
            continue
        text = f"{e['name']} {format_time(e['median_s'])}"
        if e.get("speedup_vs_numpy") and e["name"] != "numpy":
            text += f" ({format_ratio(e['speedup_vs_numpy'])} NumPy)"
        if e.get("in_process"):  # they disagreed: the figure is the isolated one
            text += f" [timed alone; {format_time(e['in_process']['median_s'])} in turn]"
        elif "isolated" in e:
            text += f" [alone {format_time(e['isolated']['median_s'])}]"
        parts.append(text)
    return f"{head} {', '.join(parts)} ({case['elapsed_s']:.1f} s)"


def _row(case: dict, entry: dict, first: bool) -> list[str]:
    head = [case["kernel"], case["layout"], "x".join(map(str, case["shape"])), case["dtype"]]
    if not first:
        head = [""] * len(head)
    if entry.get("median_s") is None:
        reason = entry.get("error") or "not timed"
        return [*head, entry["name"], f"FAILED: {reason}", "", "", "", "", ""]
    roof = entry.get("roofline")
    roof_text = "-" if roof is None else f"{100 * roof:.0f}%" + ("*" if case["in_cache"] else "")
    gbs = entry.get("gbs")
    return [
        *head,
        entry["name"],
        format_time(entry["median_s"]) + (" †" if entry.get("in_process") else ""),
        f"{100 * entry['spread']:.1f}%",
        format_speedup(entry.get("speedup_vs_numpy"), entry["name"], "numpy"),
        format_speedup(entry.get("speedup_vs_torch"), entry["name"], "torch"),
        "-" if gbs is None else f"{gbs:.1f}",
        roof_text,
    ]


def _render(rows: list[list[str]], markdown: bool, columns=COLUMNS, left: int = 5) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [list(columns), *rows]) for i in range(len(columns))]
    fmt = "  ".join(f"{{:{'<' if i < left else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*columns), "  ".join("-" * w for w in widths)]
    return lines + [fmt.format(*r).rstrip() for r in rows]


def _compact_row(case: dict, lead: str) -> list[str]:
    """One line per case: every contender's median, then the lead backend's figures."""
    by_name = {e["name"]: e for e in case["contenders"]}
    times = [format_time(by_name.get(n, {}).get("median_s")) for n in CONTENDERS]
    e = by_name.get(lead, {})
    roof = e.get("roofline")
    roof_text = "-" if roof is None else f"{100 * roof:.0f}%" + ("*" if case["in_cache"] else "")
    return [
        case["kernel"], case["layout"], "x".join(map(str, case["shape"])), case["dtype"], *times,
        format_speedup(e.get("speedup_vs_numpy"), lead, "numpy"),
        format_speedup(e.get("speedup_vs_torch"), lead, "torch"),
        "-" if e.get("gbs") is None else f"{e['gbs']:.1f}", roof_text,
    ]  # fmt: skip


CONTENDERS = (*BACKENDS, "torch")


def family_table(doc: dict, family: str, markdown: bool = False, compact: bool = False):
    """Lines of the table of one family, with a line per skipped or failed group of cases.

    ``compact`` gives one line per case (every median, then the figures of the C backend, or
    of Numba when C is absent) instead of one line per contender.
    """
    records = [r for r in doc["cases"] if r["family"] == family]
    if not records:
        return []
    ran = [r for r in records if r["status"] == "ok"]
    title = FAMILY_TITLES.get(family, family)
    lines = [f"### {title}" if markdown else f"== {title}", ""]
    if ran and compact and family != "tune":
        lead = next(b for b in (*doc["backends"], "numpy") if b in BACKENDS)
        columns = (*COLUMNS[:4], *CONTENDERS, f"{lead} vs NumPy", f"{lead} vs torch",
                   f"{lead} GB/s", f"{lead} roofline")  # fmt: skip
        rows = [_compact_row(r, lead) for r in ran]
        lines += _render(rows, markdown, columns, left=4)
    elif ran:
        rows = [_row(r, e, i == 0) for r in ran for i, e in enumerate(r["contenders"])]
        lines += _render(rows, markdown)
    faults = _fault_lines(ran, markdown)
    if faults:
        lines += ["", *faults]
    notes = sorted({(r["status"], r["note"]) for r in records if r["status"] != "ok"})
    for status, note in notes:
        count = sum(1 for r in records if (r["status"], r["note"]) == (status, note))
        lines.append(f"{status}: {count} case{'s' * (count != 1)}: {note}")
    return [*lines, ""]


def _fault_lines(records: list[dict], markdown: bool) -> list[str]:
    """A line per case where a contender paid at least FAULTS_SHOWN minor page faults per call:
    their counts, then the names of the others (results without counts, from older runs or
    from systems that do not count them, give none)."""
    lines = []
    for r in records:
        counts = [(e["name"], e.get("faults_per_call")) for e in r["contenders"]]
        counts = [(name, v) for name, v in counts if v is not None]
        paid = [f"{name} {_format_faults(v)}" for name, v in counts if v >= FAULTS_SHOWN]
        if paid:
            shape = "x".join(map(str, r["shape"]))
            text = f"page faults per call, {r['kernel']} {r['layout']} {shape} {r['dtype']}: "
            text += ", ".join(paid)
            fewer = [name for name, v in counts if v < FAULTS_SHOWN]
            if fewer:
                text += f"; {', '.join(fewer)} under {FAULTS_SHOWN:g}"
            lines.append(f"- {text}" if markdown else text)
    return lines


def _format_faults(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def header(doc: dict) -> list[str]:
    """Machine, versions, threads and bandwidth of a run, in two lines."""
    m, v, bw = doc["machine"], doc["versions"], doc["bandwidth"]
    lines = [
        f"normax bench ({doc['mode']}): {m['cpu']}, {m['usable_cores']} cores, "
        f"{_llc(m)}, {_threads(doc['threads'])}; copy {bw['copy_gbs']:.1f} GB/s, "
        f"read {bw['read_gbs']:.1f} GB/s",
        f"normax {v['normax']} (backends {', '.join(doc['backends'])}), numpy {v['numpy']}, "
        f"numba {v['numba'] or 'absent'}, torch {v['torch'] or 'absent (no torch columns)'}",
    ]
    loads = [v[0] for v in (doc.get("load_average") or {}).values() if v]
    in_turn = [r["copy_in_turn"]["copy_gbs"] for r in doc.get("cases", ()) if r.get("copy_in_turn")]
    if in_turn:
        lines[0] += (
            f"; copy in turn with the {len(in_turn)} case{'s' * (len(in_turn) != 1)} larger "
            "than the cache "
            f"{min(in_turn):.1f}-{max(in_turn):.1f} GB/s"
        )
    if loads and max(loads) > 0.5 * m["usable_cores"]:
        lines.append(
            f"warning: the machine was busy (1-minute load average up to {max(loads):.1f} "
            f"on {m['usable_cores']} cores); ratios are less reliable"
        )
    slow = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in doc["environment"]]
    if slow:
        lines.append(f"note: {', '.join(slow)} set in the environment; they can slow NumPy")
    return lines


def half_table(doc: dict, markdown: bool = False) -> list[str]:
    """Lines of the half-precision summary: per half case that ran, the speed-up of the leading
    normax backend over the same call (kernel, layout, shape) in float32, and over PyTorch on
    the same half-precision data. The float32 time is the one taken in the half case's own
    rounds (``"float32_in_turn"``); documents without it (older runs) fall back to the float32
    case's, taken minutes apart, and mark the ratio with ``~``. Empty without half-precision
    cases."""
    median = {}
    for r in doc["cases"]:
        if r["status"] == "ok":
            for e in r["contenders"]:
                if e.get("median_s"):
                    median[(r["family"], r["kernel"], r["layout"], tuple(r["shape"]), r["dtype"],
                            e["name"])] = e["median_s"]  # fmt: skip
    lead = next((b for b in BACKENDS if b in doc["backends"]), None)
    rows = []
    for r in doc["cases"]:
        key = (r["family"], r["kernel"], r["layout"], tuple(r["shape"]))
        half = median.get((*key, r["dtype"], lead))
        if r["dtype"] not in _HALF or r["status"] != "ok" or half is None:
            continue
        twin = r.get("float32_in_turn") or {}
        if twin.get("name") == lead and twin.get("median_s"):
            f32 = format_ratio(twin["median_s"] / half)
        else:
            apart = median.get((*key, "float32", lead))
            f32 = "~" + format_ratio(apart / half) if apart else "-"
        torch = median.get((*key, r["dtype"], "torch"))
        rows.append([r["family"], r["kernel"], r["layout"], "x".join(map(str, r["shape"])),
                     r["dtype"], f32, format_ratio(torch / half) if torch else "-"])  # fmt: skip
    if not rows:
        return []
    title = f"Half precision: speed-up of normax ({lead}) over"
    columns = ("family", "kernel", "layout", "shape", "dtype", "float32", "torch, same dtype")
    head = f"### {title}" if markdown else f"== {title}"
    legend = (
        "float32: the same call on float32 data, timed in the same rounds as the half case"
        " (~: the float32 case's time, taken apart from it, in runs that lack that timing); torch:"
        " PyTorch on the same half-precision data, in the same rounds."
    )
    return [head, "", *_render(rows, markdown, columns, left=5), "", legend, ""]


_HALF = ("float16", "bfloat16")


def _llc(machine: dict) -> str:
    """The cache counted on, and the one the system reports where that is larger (capped)."""
    llc = machine["llc_bytes"]
    text = f"{llc / (1 << 20):.0f} MiB LLC"
    reported = machine.get("llc_reported_bytes")  # absent from older runs
    if reported and reported > llc:
        text += f" (of {reported / (1 << 20):.0f} MiB reported, taken as shared)"
    return text


def render(doc: dict, markdown: bool = False, compact: bool = False) -> str:
    """The whole report: header, one table per family, the half-precision summary, the legend,
    and the verdict."""
    lines = [*header(doc), ""]
    for family in dict.fromkeys(r["family"] for r in doc["cases"]):
        lines += family_table(doc, family, markdown, compact)
    lines += half_table(doc, markdown)
    lines.append(LEGEND)
    lines.append(verdict(doc))
    return "\n".join(lines)


def verdict(doc: dict) -> str:
    ran = [r for r in doc["cases"] if r["status"] == "ok"]
    bad = sum(1 for r in ran for e in r["contenders"] if not e["agree"])
    errors = sum(1 for r in doc["cases"] if r["status"] == "error")
    skipped = sum(1 for r in doc["cases"] if r["status"] == "skipped")
    parts = [f"{len(ran)} cases checked and timed in {doc['elapsed_s']:.0f} s"]
    if skipped:
        parts.append(f"{skipped} skipped")
    if errors:
        parts.append(f"{errors} failed")
    parts.append(f"{bad} contenders DISAGREED" if bad else "every contender agreed")
    return "; ".join(parts) + "."


REQUIRED = {
    "schema": str,
    "created": str,
    "mode": str,
    "machine": dict,
    "versions": dict,
    "environment": dict,
    "threads": int,
    "backends": list,
    "default_backend": str,
    "torch": bool,
    "timing": dict,
    "bandwidth": dict,
    "cases": list,
    "skipped": list,
    "all_agree": bool,
    "elapsed_s": float,
    "load_average": dict,
}
CASE_KEYS = (
    "id",
    "family",
    "kernel",
    "layout",
    "shape",
    "dtype",
    "size",
    "min_bytes",
    "in_cache",
    "status",
    "note",
    "contenders",
    "unit",
)
TIMED_KEYS = (
    "median_s",
    "q1_s",
    "q3_s",
    "spread",
    "samples",
    "calls_per_sample",
    "speedup_vs_numpy",
    "speedup_vs_torch",
    "gbs",
    "roofline",
)


def check_results(doc: dict, allow_skipped: bool = False) -> list[str]:
    """Problems with a results document: missing figures, disagreement, skipped or failed cases.

    Speed is never judged: an empty list means the file is complete and every contender agreed.
    """
    problems = [
        f"missing or mistyped top-level key {k!r}"
        for k, t in REQUIRED.items()
        if not isinstance(doc.get(k), t)
    ]
    if problems:
        return problems
    if doc["schema"] != "normax-bench/1":
        problems.append(f"unknown schema {doc['schema']!r}")
    for key in ("copy_gbs", "read_gbs"):
        if not _positive(doc["bandwidth"].get(key)):
            problems.append(f"bandwidth {key} is not a positive number")
    if not doc["cases"]:
        problems.append("no cases")
    expected = set(doc["backends"]) | ({"torch"} if doc["torch"] else set())
    for case in doc["cases"]:
        problems += _check_case(case, expected, allow_skipped)
    if not doc["all_agree"]:
        problems.append("all_agree is false")
    if doc.get("interrupted"):
        problems.append("the run was interrupted: only the cases that finished are in the file")
    return problems


def _check_case(case: dict, expected: set, allow_skipped: bool) -> list[str]:
    cid = case.get("id", "?")
    missing = [k for k in CASE_KEYS if k not in case]
    if missing:
        return [f"{cid}: missing {', '.join(missing)}"]
    if case["status"] == "skipped":
        return [] if allow_skipped else [f"{cid}: skipped ({case['note']})"]
    if case["status"] != "ok":
        return [f"{cid}: {case['status']} ({case['note']})"]
    problems = []
    in_turn = case.get("copy_in_turn")
    if in_turn is not None and not _positive(in_turn.get("copy_gbs")):
        problems.append(f"{cid}: copy_in_turn lacks a positive copy_gbs")
    twin = case.get("float32_in_turn")
    if twin is not None and not _positive(twin.get("median_s")):
        problems.append(f"{cid}: float32_in_turn lacks a positive median_s")
    if case.get("float32_in_turn_error"):
        problems.append(f"{cid}: its float32 twin failed ({case['float32_in_turn_error']})")
    names = {e.get("name") for e in case["contenders"]}
    if case["family"] != "tune" and not expected <= names:
        problems.append(f"{cid}: no result for {', '.join(sorted(expected - names))}")
    for e in case["contenders"]:
        if not e.get("agree"):
            problems.append(f"{cid}: {e.get('name')} did not agree ({e.get('error')})")
            continue
        absent = [k for k in TIMED_KEYS if k not in e]
        if absent or not _positive(e["median_s"]):
            problems.append(f"{cid}: {e['name']} lacks {', '.join(absent) or 'a median'}")
        elif case["min_bytes"] and not _positive(e["gbs"]):
            problems.append(f"{cid}: {e['name']} lacks GB/s")
    return problems


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# Plotting. Speed-ups are ratios, so the axis is logarithmic and every bar starts at 1 (no
# change): a contender slower than the baseline is a bar to the left of 1, not a short bar.
MAX_CASES_PER_FILE = 40  # beyond this (--full), one file per family and dtype
COLORS = {"c": "tab:blue", "numba": "tab:orange", "numpy": "tab:gray", "torch": "tab:green"}
VERSUS = {"numpy": ("c", "numba", "torch"), "torch": ("c", "numba")}
BASELINE_NAMES = {"numpy": "NumPy", "torch": "PyTorch"}
NICE_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def plot(doc: dict, path: str) -> list[str]:
    """Speed-up bars over NumPy and over PyTorch; returns the PNG files written.

    Up to :data:`MAX_CASES_PER_FILE` cases (``--quick``) go into ``path``: one row of panels per
    family, one column per baseline. More cases (``--full``) are split into one file per family
    and dtype, ``<path stem>-<family>-<dtype>.png``, each a row per baseline and a column per
    kernel, so that each file fits on one screen. The tuning family has no NumPy or PyTorch
    counterpart and is left to the table.
    """
    records = [r for r in doc["cases"] if r["status"] == "ok" and r["family"] != "tune"]
    if not records:
        raise ValueError("nothing to plot: no kernel case ran")
    baselines = [b for b in VERSUS if any(_has(r, b) for r in records)]
    families = list(dict.fromkeys(r["family"] for r in records))
    if len(records) <= MAX_CASES_PER_FILE:
        grid = [
            [
                (
                    f"{FAMILY_SHORT.get(f, f)} vs {BASELINE_NAMES[b]}",
                    b,
                    [r for r in records if r["family"] == f],
                    True,
                )
                for b in baselines
            ]
            for f in families
        ]
        _draw(doc, grid, path, "")
        return [path]
    stem, ext = os.path.splitext(path)
    written = []
    for family in families:
        for dtype in dict.fromkeys(r["dtype"] for r in records if r["family"] == family):
            chosen = [r for r in records if r["family"] == family and r["dtype"] == dtype]
            kernels = list(dict.fromkeys(r["kernel"] for r in chosen))
            grid = [
                [
                    (
                        f"{k} vs {BASELINE_NAMES[b]}",
                        b,
                        [r for r in chosen if r["kernel"] == k],
                        False,
                    )
                    for k in kernels
                ]
                for b in baselines
            ]
            out = f"{stem}-{family}-{dtype}{ext or '.png'}"
            _draw(doc, grid, out, f"{FAMILY_SHORT.get(family, family)}, {dtype}")
            written.append(out)
    return written


FAMILY_SHORT = {"batch_norm": "batch norm", "softmax": "softmax family", "optim": "optimizers"}


def _has(record: dict, name: str) -> bool:
    return any(e["name"] == name and e.get("median_s") for e in record["contenders"])


def _draw(doc: dict, grid: list[list[tuple]], path: str, subject: str) -> None:
    """One figure: ``grid`` rows of (title, baseline, records, with kernel in labels) panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [max(len(recs) for _, _, recs, _ in row) for row in grid]
    bars = max(len(VERSUS[b]) for row in grid for _, b, _, _ in row)
    heights = [max(1.2, 0.11 * n * (bars + 0.6)) for n in rows]
    fig, axes = plt.subplots(
        len(grid),
        len(grid[0]),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        figsize=(5.9 * len(grid[0]) + 1.0, min(sum(heights) + 1.6, 10.5)),
    )
    for row, ax_row in zip(grid, axes, strict=True):
        for (title, baseline, records, with_kernel), ax in zip(row, ax_row, strict=True):
            _panel(ax, title, baseline, records, with_kernel)
    names = _legend_names(grid)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[n]) for n in names]
    labels = [LABELS.get(n, n) for n in names]
    m, h = doc["machine"], fig.get_figheight()
    fig.suptitle(
        f"normax speed-up{': ' + subject if subject else ''} ({doc['mode']} run, {m['cpu']}, "
        f"{_threads(doc['threads'])})\nbars start at 1x: right of it is faster than the "
        "baseline, left of it slower;\nerror bars span the interquartile ranges of both",
        fontsize=10,
        y=1 - 0.08 / h,
        va="top",
    )
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / h, 1, 1))  # the suptitle is accounted for; the legend not
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS = {
    "c": "normax C",
    "numba": "normax Numba",
    "numpy": "NumPy reference",
    "torch": "PyTorch CPU",
}


def _legend_names(grid: list[list[tuple]]) -> list[str]:
    """The contenders that have a bar somewhere in ``grid``, in legend order.

    A run with ``--backend c`` or ``--no-torch`` draws no Numba or PyTorch bars, and its legend
    must not promise them.
    """
    return [
        name
        for name in COLORS
        if any(
            name in VERSUS[baseline] and _speedup_range(r, name, baseline) is not None
            for row in grid
            for _, baseline, records, _ in row
            for r in records
        )
    ]


def _panel(ax, title: str, baseline: str, records: list[dict], with_kernel: bool) -> None:
    """Horizontal bars from 1 to each contender's speed-up over ``baseline``, one group per case."""
    names = [n for n in VERSUS[baseline] if any(_has(r, n) for r in records)]
    width = 0.8 / max(1, len(names))
    span = [1.0, 1.0]
    for j, name in enumerate(names):
        for i, record in enumerate(records):
            value = _speedup_range(record, name, baseline)
            if value is None:
                continue
            mid, low, high = value
            y = i + (j - (len(names) - 1) / 2) * width
            ax.barh(y, mid - 1, left=1, height=width, color=COLORS[name])
            ax.errorbar(
                mid,
                y,
                xerr=[[mid - low], [high - mid]],
                fmt="none",
                ecolor="black",
                elinewidth=0.7,
                capsize=1.5,
            )
            span = [min(span[0], low), max(span[1], high)]
    ax.axvline(1.0, color="black", linewidth=0.9)
    _log_axis(ax, span)
    ax.set_yticks(range(len(records)), [_label(r, with_kernel) for r in records], fontsize=8)
    ax.set_ylim(len(records) - 0.5, -0.5)
    ax.set_xlabel(f"speed-up over {BASELINE_NAMES[baseline]}", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)


_SHORT_DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}


def _label(record: dict, with_kernel: bool) -> str:
    shape = "x".join(map(str, record["shape"]))
    dtype = _SHORT_DTYPES.get(record["dtype"], record["dtype"])
    text = f"{record['layout']} {shape}"
    return f"{record['kernel']} {text} {dtype}" if with_kernel else text


def _log_axis(ax, span: list[float]) -> None:
    """Log scale with plain labels at 1-2-5 steps (0.5x, 1x, 2x, 5x, ...), no 10^k notation."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = span[0] / 1.25, span[1] * 1.25
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ticks = [t for t in NICE_TICKS if low <= t <= high]
    if len(ticks) > 8:  # many decades: 1-2-5 labels would collide, keep the powers of ten
        ticks = [t for t in ticks if math.log10(t).is_integer()]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=8)


def _speedup_range(record: dict, name: str, baseline: str):
    """Speed-up of ``name`` over ``baseline`` (ratio of medians) with the range the two
    interquartile ranges allow: (baseline q1 / name q3, baseline q3 / name q1)."""
    by_name = {e["name"]: e for e in record["contenders"]}
    a, b = by_name.get(name, {}), by_name.get(baseline, {})
    if not (a.get("median_s") and b.get("median_s")):
        return None
    mid = b["median_s"] / a["median_s"]
    low = b.get("q1_s", b["median_s"]) / a.get("q3_s", a["median_s"])
    high = b.get("q3_s", b["median_s"]) / a.get("q1_s", a["median_s"])
    return mid, min(low, mid), max(high, mid)


def _threads(n: int) -> str:
    return f"{n} thread" + "s" * (n != 1)
