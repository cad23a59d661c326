"""``normax bench --compare BASE.json [NEW.json]``: did anything get faster or slower?

Per case and contender present in both runs, the ratio new / base of the median times and a
verdict that respects the noise of both runs (:func:`verdict`): a figure is "slower" only when
its ratio exceeds the threshold *and* the middle halves of the two sets of samples do not
overlap, so a ratio of 1.15 between two wide, overlapping distributions stays "same". Runs taken
on different machines or with different settings are flagged before any ratio is shown.
"""

from __future__ import annotations

import math

from .report import format_time

DEFAULT_THRESHOLD = 0.10
# The control band: between these percentiles of the control contender's new / base ratios lies
# where the machine alone moved figures between the two runs.
CONTROL = "torch"
CONTROL_PERCENTILES = (10, 90)
MIN_CONTROL_FIGURES = 5
# Contenders whose slowdown is a normax regression (the exit status): every one but PyTorch.
EXTERNAL = ("torch",)
# Settings that must match for ratios to compare builds rather than machines or options.
SETTINGS = (
    ("machine", "cpu"),
    ("machine", "usable_cores"),
    ("machine", "llc_bytes"),
    ("machine", "python"),
    ("threads",),
    ("mode",),
    ("timing", "min_time"),
    ("timing", "sample_time"),
    ("timing", "min_samples"),
    ("timing", "max_time"),
    ("timing", "isolation", "mode"),
    ("environment",),
    ("versions", "numpy"),
    ("versions", "numba"),
    ("versions", "torch"),
)


def verdict(base: dict, new: dict, threshold: float = DEFAULT_THRESHOLD) -> str:
    """``"faster"``, ``"slower"`` or ``"same"`` for two timings of one contender.

    Parameters
    ----------
    base, new : dict
        Figures with ``median_s``, ``q1_s`` and ``q3_s`` (per call).
    threshold : float
        Smallest relative change reported, 0.10 for 10 %; below it everything is "same".

    Notes
    -----
    Both conditions must hold: the ratio of medians is beyond ``1 + threshold`` (or below its
    inverse), and the interquartile ranges are disjoint, so half of each run's samples lie on
    its side of the other run's middle half. On a noisy machine a wide spread widens what counts
    as "same"; with many tight samples a small real change is caught (down to the threshold).

    Examples
    --------
    >>> verdict({"median_s": 1.0, "q1_s": 0.95, "q3_s": 1.05},
    ...         {"median_s": 1.3, "q1_s": 1.25, "q3_s": 1.35})
    'slower'
    >>> verdict({"median_s": 1.0, "q1_s": 0.8, "q3_s": 1.4},
    ...         {"median_s": 1.3, "q1_s": 1.1, "q3_s": 1.5})
    'same'
    """
    ratio = new["median_s"] / base["median_s"]
    if ratio > 1 + threshold and new["q1_s"] > base["q3_s"]:
        return "slower"
    if ratio < 1 / (1 + threshold) and new["q3_s"] < base["q1_s"]:
        return "faster"
    return "same"


def differences(base: dict, new: dict) -> list[str]:
    """The settings in which two results documents differ, as ``"threads: 2 -> 1"`` lines."""
    out = []
    for path in SETTINGS:
        a, b = _get(base, path), _get(new, path)
        if a != b:
            out.append(f"{'.'.join(path)}: {_short(a)} -> {_short(b)}")
    return out


def busy(doc: dict) -> float | None:
    """The highest 1-minute load average of a run per usable core, or None if unknown."""
    loads = [v[0] for v in (doc.get("load_average") or {}).values() if v]
    cores = _get(doc, ("machine", "usable_cores"))
    return max(loads) / cores if loads and cores else None


def _get(doc: dict, path: tuple[str, ...]):
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def drift(base: dict, new: dict) -> tuple[float | None, str]:
    """How much slower the machine itself ran ``new`` than ``base``: (factor, what it is from).

    The median new / base ratio of PyTorch's figures, which no normax build changes; without
    three of those, the median base / new ratio of the copies timed in turn with the cases larger
    than the cache; without three of those either, the ratio of the copy bandwidths probed in
    each run. On a shared machine the load can change every figure by 2x between two runs of
    the same build.
    """
    old_cases, new_cases = _timed(base), _timed(new)
    ratios = sorted(
        n["torch"]["median_s"] / old_cases[cid]["torch"]["median_s"]
        for cid, n in new_cases.items()
        if "torch" in n and "torch" in old_cases.get(cid, {})
    )
    if len(ratios) >= 3:
        return ratios[len(ratios) // 2], f"the median of PyTorch's {len(ratios)} figures"
    old_copies, new_copies = _copies_in_turn(base), _copies_in_turn(new)
    ratios = sorted(old_copies[cid] / gbs for cid, gbs in new_copies.items() if cid in old_copies)
    if len(ratios) >= 3:
        return ratios[len(ratios) // 2], f"the median of {len(ratios)} copies timed in turn"
    b, n = (_get(d, ("bandwidth", "copy_gbs")) for d in (base, new))
    if b and n:
        return b / n, "the copy bandwidth probed in each run"
    return None, "nothing to estimate it from"


def control_band(rows: list[dict], threshold: float) -> tuple[float, float] | None:
    """Where the machine alone moved figures between two runs, from the control contender.

    No build of normax changes PyTorch's figures, so the spread of their new / base ratios is
    the noise *between* runs (the load changing from minute to minute on a shared machine),
    which the interquartile ranges of each run do not see. The band runs from the 10th to the
    90th percentile of those ratios, widened to include the threshold either side of 1; None
    with fewer than five control figures.
    """
    ratios = sorted(r["ratio"] for r in rows if r["contender"] == CONTROL)
    if len(ratios) < MIN_CONTROL_FIGURES:
        return None
    low, high = (ratios[round(p / 100 * (len(ratios) - 1))] for p in CONTROL_PERCENTILES)
    return min(low, 1 / (1 + threshold)), max(high, 1 + threshold)


def _controlled(row: dict, band: tuple[float, float] | None) -> str:
    """The verdict of ``row``, "same" when its ratio stays inside the control band."""
    if band is None or row["contender"] == CONTROL:
        return row["verdict"]
    if row["verdict"] == "slower" and row["ratio"] <= band[1]:
        return "same"
    if row["verdict"] == "faster" and row["ratio"] >= band[0]:
        return "same"
    return row["verdict"]


def _scaled(figures: dict, factor: float) -> dict:
    return {k: figures[k] / factor for k in ("median_s", "q1_s", "q3_s")}


def compare(
    base: dict,
    new: dict,
    threshold: float = DEFAULT_THRESHOLD,
    normalize: bool = False,
    control: bool = True,
) -> dict:
    """Every (case, contender) figure in both runs, with its ratio and verdict.

    With ``normalize``, the new figures are first divided by the machine's :func:`drift`, so
    that a change of load between the runs does not read as a change of every kernel. With
    ``control`` (and PyTorch in both runs), a normax figure is also "same" while its ratio stays
    inside the :func:`control_band`.

    Returns
    -------
    dict
        ``rows`` (case id, contender, base and new medians, ratio, verdict), ``only_base`` and
        ``only_new`` (case ids timed in one run only), ``differences`` (settings) and
        ``counts`` of each verdict.
    """
    if not 0 <= threshold < 10 or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a fraction in [0, 10), got {threshold!r}")
    old_cases, new_cases = _timed(base), _timed(new)
    factor, source = drift(base, new)
    scale = factor if (normalize and factor) else 1.0
    rows = []
    for cid, new_case in new_cases.items():
        old_case = old_cases.get(cid)
        if old_case is None:
            continue
        for name, n in new_case.items():
            b = old_case.get(name)
            if b is None:
                continue
            n = _scaled(n, scale)
            rows.append(
                {
                    "case": cid,
                    "contender": name,
                    "base_s": b["median_s"],
                    "new_s": n["median_s"],
                    "ratio": n["median_s"] / b["median_s"],
                    "verdict": verdict(b, n, threshold),
                }
            )
    band = control_band(rows, threshold) if control else None
    for r in rows:
        r["verdict"] = _controlled(r, band)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("slower", "faster", "same")}
    return {
        "rows": rows,
        "only_base": sorted(set(old_cases) - set(new_cases)),
        "only_new": sorted(set(new_cases) - set(old_cases)),
        "differences": differences(base, new),
        "counts": counts,
        "threshold": threshold,
        "drift": {"factor": factor, "source": source, "applied": scale != 1.0},
        "load": (busy(base), busy(new)),
        "control_band": band,
        "regressions": [
            r for r in rows if r["verdict"] == "slower" and r["contender"] not in EXTERNAL
        ],
    }


def _copies_in_turn(doc: dict) -> dict[str, float]:
    """case id -> GB/s of the copy timed in turn with it (the cases larger than the cache)."""
    return {
        case["id"]: case["copy_in_turn"]["copy_gbs"]
        for case in doc.get("cases", [])
        if case.get("status") == "ok" and (case.get("copy_in_turn") or {}).get("copy_gbs")
    }


def _timed(doc: dict) -> dict[str, dict[str, dict]]:
    """case id -> contender -> figures, for every contender with a median."""
    out = {}
    for case in doc.get("cases", []):
        if case.get("status") != "ok":
            continue
        figures = {e["name"]: e for e in case["contenders"] if e.get("median_s")}
        if figures:
            out[case["id"]] = figures
    return out


def render_comparison(result: dict, base_name: str, new_name: str) -> str:
    """The comparison as text: flagged settings, one line per figure, then a summary line."""
    lines = [f"normax bench --compare: {base_name} (base) -> {new_name} (new)"]
    for d in result["differences"]:
        lines.append(f"WARNING: the runs differ in {d}")
    if result["differences"]:
        lines.append("WARNING: ratios below mix the build with those differences")
    for name, load in ((base_name, result["load"][0]), (new_name, result["load"][1])):
        if load is not None and load > 0.5:
            lines.append(
                f"WARNING: the machine was busy during {name} (load average up to "
                f"{load:.1f} per core): other work can move every figure between runs"
            )
    d = result["drift"]
    if d["factor"] is not None:
        text = f"machine drift: new ran {d['factor']:.2f}x as long as base, from {d['source']}"
        if d["applied"]:
            lines.append(f"{text}; new figures are divided by it (--normalize)")
        elif abs(math.log(d["factor"])) > math.log1p(result["threshold"]):
            lines.append(
                f"WARNING: {text}: the load changed between the runs, so ratios below "
                "mix the build with it; --normalize divides it out"
            )
    if result["control_band"] is not None:
        low, high = result["control_band"]
        p, q = CONTROL_PERCENTILES
        lines.append(
            f"control: PyTorch's figures moved {low:.2f}x-{high:.2f}x between the runs "
            f"({p}th-{q}th percentile); a normax figure must move beyond that too"
        )
    lines.append("")
    width = max([len(r["case"]) for r in result["rows"]] + [4])
    lines.append(
        f"{'case':<{width}}  {'contender':<9}  {'base':>9}  {'new':>9}  {'new/base':>8}  verdict"
    )
    for r in result["rows"]:
        mark = {"slower": "slower ▼", "faster": "faster ▲"}.get(r["verdict"], "same")
        lines.append(
            f"{r['case']:<{width}}  {r['contender']:<9}  {format_time(r['base_s']):>9}  "
            f"{format_time(r['new_s']):>9}  {r['ratio']:>7.2f}x  {mark}"
        )
    for key, label in (("only_base", "only in base"), ("only_new", "only in new")):
        if result[key]:
            lines.append(
                f"{label}: {len(result[key])} cases ({', '.join(result[key][:3])}"
                f"{', ...' if len(result[key]) > 3 else ''})"
            )
    lines.append(summary(result))
    return "\n".join(lines)


def summary(result: dict) -> str:
    """One line: how many figures went which way, and whether normax regressed."""
    c, n = result["counts"], len(result["rows"])
    rule = "interquartile ranges disjoint"
    if result["control_band"] is not None:
        rule += ", beyond the control band"
    text = (
        f"{n} figures compared (threshold {100 * result['threshold']:.0f}%, {rule}): "
        f"{c['slower']} slower, {c['faster']} faster, {c['same']} same"
    )
    regressions = result["regressions"]
    if regressions:
        worst = max(regressions, key=lambda r: r["ratio"])
        text += (
            f"; REGRESSION in {len(regressions)} normax figures (worst: {worst['case']} "
            f"{worst['contender']} {worst['ratio']:.2f}x slower)"
        )
    else:
        text += "; no normax regression"
    if result["differences"]:
        text += f"; {len(result['differences'])} settings differ (see warnings)"
    if result["drift"]["applied"]:
        text += f"; normalized by a machine drift of {result['drift']['factor']:.2f}x"
    return text + "."
