"""The kernel axis of the report: each claim × driver measured on more than one kernel, its
verdict per kernel, and the pairs of kernels whose verdicts differ — computed from the verdicts,
never written by hand.

A timing verdict (seconds, bytes per second, operations per second) from an emulated (TCG) host
and one from a native host differ by the emulation before any kernel: such a pair is listed as
"emulation", not as a kernel difference. Feature, space and count verdicts do not depend on the
speed of the CPU, so they compare across emulation as across kernels.
"""

from __future__ import annotations

import re
from itertools import combinations

from cowlab.report.format import fmt_ratio, fmt_value

TIMING_UNITS = {"s", "B/s", "1/s"}  # what TCG slows down; B, count and ratio samples it does not


def short(release: str | None) -> str:
    """'6.1.0-57-amd64' → '6.1', '5.10.0-30-amd64' → '5.10'; anything else as it is."""
    m = re.match(r"(\d+\.\d+)", release or "")
    return m.group(1) if m else str(release)


def version(release: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", release)[:3]) or (999,)


def is_timing(v: dict) -> bool:
    """Whether the verdict's statistic is a time or a rate (what emulation distorts)."""
    units = {
        v.get("unit"),
        (v.get("num") or {}).get("unit"),
        (v.get("den") or {}).get("unit"),
        *(p.get("unit") for p in v.get("parts") or []),
    }
    return bool(units & TIMING_UNITS)


def statistic(v: dict) -> str:
    """The verdict's number with its unit; for a ratio the two medians it divides; for a split
    verdict every part's number."""
    if v.get("verdict") == "depends" or (v.get("value") is None and v.get("parts")):
        return "; ".join(
            f"{p['condition']}: {p['verdict']} {fmt_value(p.get('value'), p.get('unit'))}" for p in v.get("parts") or []
        )
    s = fmt_value(v.get("value"), v.get("unit"))
    if v.get("num") and v.get("den"):
        s += f" ({fmt_value(v['num']['median'], v['num']['unit'])} ÷ {fmt_value(v['den']['median'], v['den']['unit'])})"
    elif v.get("unit") == "ratio" and v.get("value") is not None:
        s = fmt_ratio(v["value"])
    return s


def backing_of(df) -> dict[tuple[str, str], set[str]]:
    """{(run_id, workload): the backing filesystems its samples were on}: a verdict's hosts may
    differ in more than the kernel (the kernel VM formats xfs; this host's runs are on ext4)."""
    if df.empty or "backing_fs" not in df.columns:
        return {}
    g = df.dropna(subset=["backing_fs"]).groupby(["run_id", "workload"])["backing_fs"]
    return {k: {str(x) for x in v} for k, v in g.unique().items()}


def _entry(v: dict, backing: dict) -> dict:
    fs = sorted({b for r in v.get("runs") or [] for b in backing.get((r, v.get("workload")), ())})
    return {
        "backing": fs,
        "kernel": v["kernel"],
        "kernel_short": short(v["kernel"]),
        "emulated": bool(v["emulated"]),
        "hostname": v["hostname"],
        "host": v["host"],
        "host_label": v["host_label"],
        "grid": v.get("grid"),
        "verdict": v["verdict"],
        "condition": v.get("condition") or "",
        "value": v.get("value"),
        "unit": v.get("unit"),
        "n": v.get("n"),
        "statistic": statistic(v),
    }


def _where(e: dict) -> str:
    return f"{e['kernel']} ({'emulated' if e['emulated'] else 'native'})"


def _differs(a: dict, b: dict) -> bool:
    # two "depends" that split differently (holds on ext4 here, on xfs there) differ too
    return a["verdict"] != b["verdict"] or (a["verdict"] == "depends" and a["condition"] != b["condition"])


def axis(verdicts: list[dict], backing: dict | None = None) -> dict:
    """{"kernels": every (release, emulated) with a verdict, "claims": each claim × driver measured
    on more than one kernel with its verdict per kernel, "changes": each pair of kernels of such
    a claim × driver whose verdicts differ, "kernel" or "emulation" in `kind`}. `backing`
    (backing_of): a pair whose backing filesystems differ says so in its note."""
    backing = backing or {}
    groups: dict[tuple[str, str], list[dict]] = {}
    meta: dict[tuple[str, str], dict] = {}
    for v in verdicts:
        if v.get("verdict") == "not measured" or not v.get("host"):
            continue
        key = (v["claim"], v["driver"])
        groups.setdefault(key, []).append(v)
        meta.setdefault(key, {"quote": v.get("quote", ""), "timing": False})
        meta[key]["timing"] |= is_timing(v)
    kernels = sorted(
        {(v["kernel"], bool(v["emulated"])) for vs in groups.values() for v in vs},
        key=lambda k: (k[1], version(k[0]), k[0]),
    )
    claims, changes = [], []
    for (claim, driver), vs in groups.items():
        if len({v["kernel"] for v in vs}) < 2:
            continue
        entries = sorted(
            (_entry(v, backing) for v in vs), key=lambda e: (e["emulated"], version(e["kernel"]), e["host"])
        )
        timing = meta[(claim, driver)]["timing"]
        claims.append(
            {
                "claim": claim,
                "driver": driver,
                "quote": meta[(claim, driver)]["quote"],
                "timing": timing,
                "entries": entries,
                "differs": any(_differs(a, b) for a, b in combinations(entries, 2) if a["kernel"] != b["kernel"]),
            }
        )
        for a, b in combinations(entries, 2):
            if a["kernel"] == b["kernel"] or not _differs(a, b):
                continue
            emulation = timing and a["emulated"] != b["emulated"]
            if emulation:
                note = "a timing claim, emulated against native: TCG's slowdown, not the kernel, may be the difference"
            elif a["emulated"] == b["emulated"]:
                note = f"both {'emulated' if a['emulated'] else 'native'}: the kernel differs"
            else:
                note = "not a timing claim: comparable across emulation"
            if a["backing"] and b["backing"] and a["backing"] != b["backing"]:
                note += (
                    f"; the backing filesystems differ too ({', '.join(a['backing'])} against "
                    f"{', '.join(b['backing'])}): not the kernel alone"
                )
            if "inconclusive" in (a["verdict"], b["verdict"]):
                note += "; undecided on one kernel (its interval straddles the threshold), not a contradiction"
            changes.append(
                {
                    "claim": claim,
                    "driver": driver,
                    "timing": timing,
                    "kind": "emulation" if emulation else "kernel",
                    "a": a,
                    "b": b,
                    "note": note,
                    "text": (
                        f"{_where(a)}: {a['verdict']} {a['statistic']}; {_where(b)}: {b['verdict']} {b['statistic']}"
                    ),
                }
            )
    changes.sort(key=lambda c: (c["kind"] != "kernel", c["claim"], c["driver"]))
    return {
        "kernels": [{"kernel": k, "kernel_short": short(k), "emulated": e} for k, e in kernels],
        "claims": claims,
        "changes": changes,
    }


def multi_kernel_drivers(verdicts: list[dict]) -> set[str]:
    """Drivers with verdicts on more than one kernel: their cells name the kernel."""
    seen: dict[str, set] = {}
    for v in verdicts:
        if v.get("kernel"):
            seen.setdefault(v["driver"], set()).add(v["kernel"])
    return {d for d, ks in seen.items() if len(ks) > 1}


def markdown(ax: dict) -> str:
    """The section of report/README.md: the kernels, then what differs, kernel differences first."""
    out = ["## What changed between kernels", ""]
    if not ax["claims"]:
        return "\n".join(out + ["No claim × driver here is measured on more than one kernel.", ""])
    ks = ", ".join(f"{k['kernel']} ({'emulated' if k['emulated'] else 'native'})" for k in ax["kernels"])
    kern = [c for c in ax["changes"] if c["kind"] == "kernel"]
    emu = [c for c in ax["changes"] if c["kind"] == "emulation"]
    same = sum(not c["differs"] for c in ax["claims"])
    out += [
        f"Kernels: {ks}. {len(ax['claims'])} claim × driver pairs are measured on more than one kernel; "
        f"{same} have the same verdict on every kernel. Timing verdicts of an emulated and a native "
        f"host are not compared as kernels (TCG slows everything); feature, space and count verdicts are.",
        "",
    ]
    for title, rows in (
        ("Kernel differences", kern),
        ("Emulated against native timing (not a kernel difference)", emu),
    ):
        out += [f"**{title}** ({len(rows)})", ""]
        if rows:
            out += ["| claim | driver | kernel A | kernel B | why it counts |", "|---|---|---|---|---|"]
            out += [
                "| "
                + " | ".join(
                    x.replace("|", "/")
                    for x in (
                        f"`{c['claim']}`",
                        c["driver"],
                        f"{_where(c['a'])}: {c['a']['verdict']} {c['a']['statistic']}",
                        f"{_where(c['b'])}: {c['b']['verdict']} {c['b']['statistic']}",
                        c["note"],
                    )
                )
                + " |"
                for c in rows
            ]
        else:
            out.append("None.")
        out.append("")
    return "\n".join(out)
