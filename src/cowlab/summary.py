"""The end-of-run table: medians per metric and parameter point, and the headline ratios."""

from __future__ import annotations

import pandas as pd


def frame(records: list[dict]) -> pd.DataFrame:
    rows = [{**{k: v for k, v in r.items() if k != "params"}, **r["params"]}
            for r in records if r["status"] == "ok"]
    return pd.DataFrame(rows)


def medians(records: list[dict]) -> list[tuple[str, str, str, float, float, float, int, str]]:
    """(workload, metric, params, median, p10, p90, n, unit) per parameter point."""
    out = []
    for r in records:
        r.setdefault("_key", " ".join(f"{_short(k)}={_human(v) if k.endswith('bytes') else v}"
                                      for k, v in sorted(r["params"].items())))
    df = pd.DataFrame([r for r in records if r["status"] == "ok"])
    if df.empty:
        return out
    for (wl, metric, key, unit), g in df.groupby(["workload", "metric", "_key", "unit"], sort=False):
        v = g["value"].astype(float)
        out.append((wl, metric, key, v.median(), v.quantile(0.1), v.quantile(0.9), len(v), unit))
    return out


def _short(k: str) -> str:
    return k.removesuffix("_bytes")


def _human(n) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if isinstance(n, int) and n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def headlines(records: list[dict]) -> list[str]:
    df = frame(records)
    lines: list[str] = []
    if df.empty:
        return lines
    c = df[(df.get("workload") == "creation") & (df.get("metric") == "create_seconds")]
    if not c.empty and "layers" in c:
        one = c[c["layers"] == 1]
        if one["image_size_bytes"].nunique() > 1:
            lo, hi = int(one["image_size_bytes"].min()), int(one["image_size_bytes"].max())
            a = one[one["image_size_bytes"] == lo]["value"].median()
            b = one[one["image_size_bytes"] == hi]["value"].median()
            lines.append(f"creation time at {hi >> 20} MiB ÷ at {lo >> 20} MiB: {b / a:.2f}× "
                         f"({b * 1e3:.2f} ms vs {a * 1e3:.2f} ms)")
    f = df[(df.get("workload") == "mount_floor")]
    if not f.empty and not c.empty:
        r = df[(df.get("workload") == "creation") & (df.get("metric") == "remove_seconds")]
        for n in sorted(f["layers"].unique()):
            sel = lambda d: d[(d["layers"] == n) & (d["image_size_bytes"] == f["image_size_bytes"].min())]["value"].median()
            total = sel(c) + sel(r)
            floor = sel(f)
            if floor and floor == floor and total == total:
                lines.append(f"harness overhead at {n} layer(s): create+remove {total * 1e3:.2f} ms ÷ "
                             f"bare mount+umount {floor * 1e3:.2f} ms = {total / floor:.2f}×")
    s = df[(df.get("workload") == "space")]
    for ev in ("create", "write_new_1KiB", "append_1KiB_to_64MiB"):
        v = s[s["event"] == ev]["value"] if "event" in s else []
        if len(v):
            lines.append(f"space after {ev}: {v.median() / 1024:.0f} KiB (median)")
    return lines
