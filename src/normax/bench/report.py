"""Show the results: one table per kernel family, the results-file check, the speed-up plot."""

from __future__ import annotations

import math

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
    "that over the copy bandwidth measured in this run (* the data fits in the last-level "
    "cache, so the memory roofline does not bind)."
)


def format_time(seconds: float | None) -> str:
    """``1.23 ms`` style, three significant digits."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_speedup(value: float | None, name: str, baseline: str) -> str:
    if name == baseline:
        return "base"
    if value is None:
        return "-"
    flag = REGRESSION if value < 1 and name in NORMAX else ""
    return f"{value:.2f}x{flag}"


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
        format_time(entry["median_s"]),
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


CONTENDERS = ("c", "numba", "numpy", "torch")


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
        lead = next(b for b in (*doc["backends"], "numpy") if b in ("c", "numba", "numpy"))
        columns = (*COLUMNS[:4], *CONTENDERS, f"{lead} vs NumPy", f"{lead} vs torch",
                   f"{lead} GB/s", f"{lead} roofline")  # fmt: skip
        rows = [_compact_row(r, lead) for r in ran]
        lines += _render(rows, markdown, columns, left=4)
    elif ran:
        rows = [_row(r, e, i == 0) for r in ran for i, e in enumerate(r["contenders"])]
        lines += _render(rows, markdown)
    notes = sorted({(r["status"], r["note"]) for r in records if r["status"] != "ok"})
    for status, note in notes:
        count = sum(1 for r in records if (r["status"], r["note"]) == (status, note))
        lines.append(f"{status}: {count} case{'s' * (count != 1)}: {note}")
    return [*lines, ""]


def header(doc: dict) -> list[str]:
    """Machine, versions, threads and bandwidth of a run, in two lines."""
    m, v, bw = doc["machine"], doc["versions"], doc["bandwidth"]
    llc = m["llc_bytes"] / (1 << 20)
    lines = [
        f"normax bench ({doc['mode']}): {m['cpu']}, {m['usable_cores']} cores, "
        f"{llc:.0f} MiB LLC, {_threads(doc['threads'])}; copy {bw['copy_gbs']:.1f} GB/s, "
        f"read {bw['read_gbs']:.1f} GB/s",
        f"normax {v['normax']} (backends {', '.join(doc['backends'])}), numpy {v['numpy']}, "
        f"numba {v['numba'] or 'absent'}, torch {v['torch'] or 'absent (no torch columns)'}",
    ]
    loads = [v[0] for v in (doc.get("load_average") or {}).values() if v]
    if loads and max(loads) > 0.5 * m["usable_cores"]:
        lines.append(
            f"warning: the machine was busy (1-minute load average up to {max(loads):.1f} "
            f"on {m['usable_cores']} cores); ratios are less reliable"
        )
    slow = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in doc["environment"]]
    if slow:
        lines.append(f"note: {', '.join(slow)} set in the environment; they can slow NumPy")
    return lines


def render(doc: dict, markdown: bool = False, compact: bool = False) -> str:
    """The whole report: header, one table per family, the legend, and the verdict."""
    lines = [*header(doc), ""]
    for family in dict.fromkeys(r["family"] for r in doc["cases"]):
        lines += family_table(doc, family, markdown, compact)
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


def plot(doc: dict, path: str) -> None:
    """Speed-up over NumPy per case and contender, one panel per family (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [
        f
        for f in dict.fromkeys(r["family"] for r in doc["cases"])
        if any(r["status"] == "ok" and r["family"] == f for r in doc["cases"])
    ]
    if not families:
        raise ValueError("nothing to plot: no case ran")
    groups = {
        f: [r for r in doc["cases"] if r["family"] == f and r["status"] == "ok"] for f in families
    }
    heights = [max(1.5, 0.32 * len(g) * 2) for g in groups.values()]
    fig, axes = plt.subplots(
        len(families),
        1,
        figsize=(9, sum(heights) + 1),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (family, records) in zip(axes[:, 0], groups.items(), strict=True):
        _plot_family(ax, family, records)
    fig.suptitle(f"normax speed-up ({doc['machine']['cpu']}, {_threads(doc['threads'])})")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_family(ax, family: str, records: list[dict]) -> None:
    baseline = "memory" if family == "tune" else "numpy"
    names = [
        n
        for n in ("c", "numba", "torch", "sqlite")
        if any(e["name"] == n for r in records for e in r["contenders"])
    ]
    labels = [
        f"{r['kernel']} {r['layout']} {'x'.join(map(str, r['shape']))} {r['dtype']}"
        for r in records
    ]
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        values = [_speedup(r, name, baseline) for r in records]
        pos = [i + (j - (len(names) - 1) / 2) * width for i in range(len(records))]
        ax.barh(pos, [v or 0 for v in values], height=width, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(records)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up over {baseline} (higher is faster)")
    ax.set_title(FAMILY_TITLES.get(family, family), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def _speedup(record: dict, name: str, baseline: str) -> float | None:
    times = {e["name"]: e.get("median_s") for e in record["contenders"]}
    if times.get(name) and times.get(baseline):
        return times[baseline] / times[name]
    return None


def _threads(n: int) -> str:
    return f"{n} thread" + "s" * (n != 1)
