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
    if "mode" in df:  # engine samples are labelled "workload [engine]", never pooled with primitive
        df["workload"] = df["workload"] + df["mode"].map(lambda m: "" if m in ("primitive", None) else f" [{m}]")
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
    if any(r.get("mode", "primitive") != "primitive" for r in records):
        prim = [r for r in records if r.get("mode", "primitive") == "primitive"]
        return headlines(prim) + engine_headlines(records)
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
        for n in sorted(int(x) for x in f["layers"].unique()):
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


# --- engine mode (cowlab.engine) -------------------------------------------------------------
def _creation_medians(records: list[dict], mode: str) -> dict[tuple[int, int], dict[str, float]]:
    """(image_size_bytes, layers) → {metric: median} for one mode's creation samples."""
    out: dict[tuple[int, int], dict[str, list[float]]] = {}
    for r in records:
        if (r["status"] != "ok" or r.get("mode", "primitive") != mode or r["workload"] != "creation"
                or "image_size_bytes" not in r["params"]):
            continue
        key = (int(r["params"]["image_size_bytes"]), int(r["params"].get("layers", 1)))
        out.setdefault(key, {}).setdefault(r["metric"], []).append(float(r["value"]))
    return {k: {m: float(pd.Series(v).median()) for m, v in d.items()} for k, d in out.items()}


def primitive_records_from(out_dir, driver: str, hostname: str | None = None) -> tuple[list[dict], str]:
    """The primitive creation samples of the newest earlier run of driver under out_dir (for an
    engine-only run's comparison), and that run's id ('' if none)."""
    import json
    import socket
    from pathlib import Path
    base = Path(out_dir) / (hostname or socket.gethostname())
    best: tuple[float, list[dict], str] | None = None
    for rj in base.glob("*/run.json") if base.exists() else []:
        try:
            run = json.loads(rj.read_text())
        except (OSError, ValueError):
            continue
        if run.get("driver") != driver or run.get("mode", "primitive") == "engine":
            continue
        recs = []
        for line in (rj.parent / "samples.jsonl").read_text().splitlines() if (rj.parent / "samples.jsonl").exists() else []:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("mode", "primitive") == "primitive" and r.get("workload") == "creation" and r.get("status") == "ok":
                recs.append(r)
        started = float(run.get("started") or 0)
        if recs and (best is None or started > best[0]):
            best = (started, recs, run.get("run_id", rj.parent.name))
    return (best[1], best[2]) if best else ([], "")


def engine_vs_primitive(records: list[dict], fallback: list[dict] | None = None) -> list[dict]:
    """Per image size and layer count: the engine's create/start/run medians next to the
    primitive create median (this run's, else `fallback`'s), the difference and the storage
    share of `docker run`. Rows are dicts; a missing number is None."""
    eng = _creation_medians(records, "engine")
    prim = _creation_medians(records, "primitive") or _creation_medians(fallback or [], "primitive")
    rows = []
    for key in sorted(eng):
        e, p = eng[key], prim.get(key, {})
        pc = p.get("create_seconds")
        ec, er = e.get("create_seconds"), e.get("run_seconds")
        rows.append({"image_size_bytes": key[0], "layers": key[1], "primitive_create": pc,
                     "engine_create": ec, "engine_start": e.get("start_seconds"), "engine_run": er,
                     "engine_remove": e.get("remove_seconds"),
                     "create_difference": (ec - pc) if ec is not None and pc is not None else None,
                     "storage_share_of_run": (pc / er) if pc is not None and er else None})
    return rows


def engine_headlines(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        if r.get("mode") == "engine" and r["metric"] == "engine_start_seconds" and r["status"] != "ok":
            lines.append(f"engine: dockerd refused the driver: {r.get('error', '')}")
    rows = engine_vs_primitive(records)
    one = [r for r in rows if r["layers"] == 1 and r["engine_create"] is not None]
    if len(one) > 1:
        lo, hi = one[0], one[-1]
        lines.append(f"engine: docker create at {hi['image_size_bytes'] >> 20} MiB ÷ at "
                     f"{lo['image_size_bytes'] >> 20} MiB: {hi['engine_create'] / lo['engine_create']:.2f}× "
                     f"({hi['engine_create'] * 1e3:.1f} ms vs {lo['engine_create'] * 1e3:.1f} ms)")
    for r in one[:1]:
        if r["create_difference"] is not None and r["engine_run"]:
            lines.append(f"engine at {r['image_size_bytes'] >> 20} MiB: docker create {r['engine_create'] * 1e3:.1f} ms = "
                         f"storage {r['primitive_create'] * 1e3:.2f} ms + engine {r['create_difference'] * 1e3:.1f} ms; "
                         f"docker run of `true` {r['engine_run'] * 1e3:.0f} ms, of which storage "
                         f"{100 * r['storage_share_of_run']:.1f}%")
    return lines
