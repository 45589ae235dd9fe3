"""The end-of-run summary: the findings a user came for, in words and numbers with the slide claim
each answers (one screen), and the full table of medians (a file in the run directory, printed
again by `cowlab show RUN`, at the terminal's width)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cowlab.base import units


def frame(records: list[dict]) -> pd.DataFrame:
    rows = [
        {**{k: v for k, v in r.items() if k != "params"}, **r["params"]}
        for r in records
        if r["status"] == "ok" and r.get("value") is not None
    ]
    return pd.DataFrame(rows)


@dataclass
class Row:
    workload: str
    metric: str
    params: dict  # only the parameters that vary within (workload, metric)
    median: float
    p10: float
    p90: float
    n: int
    unit: str


def _clean(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}  # metacopy=None: the default


def rows(records: list[dict]) -> tuple[list[Row], dict[str, dict]]:
    """Medians (p10, p90) per workload, metric and parameter point, in the order measured, with
    each row's params cut to those that vary within its (workload, metric); and per workload the
    parameters that are the same in all its rows (said once, in its heading)."""
    ok = [r for r in records if r["status"] == "ok" and r.get("value") is not None]
    label = {
        id(r): r["workload"] + ("" if r.get("mode", "primitive") == "primitive" else f" [{r['mode']}]") for r in ok
    }
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((label[id(r)], r["metric"]), []).append(r)
    fixed: dict[str, dict] = {}
    for (wl, _), rs in groups.items():
        for r in rs:
            p = _clean(r["params"])
            if wl not in fixed:
                fixed[wl] = dict(p)
            else:
                fixed[wl] = {k: v for k, v in fixed[wl].items() if p.get(k, object()) == v}
    out = []
    for (wl, metric), rs in groups.items():
        keys = list(dict.fromkeys(k for r in rs for k in _clean(r["params"])))
        vary = [k for k in keys if len({repr(_clean(r["params"]).get(k)) for r in rs}) > 1 or k not in fixed[wl]]
        points: dict[tuple, list[dict]] = {}
        for r in rs:
            p = _clean(r["params"])
            points.setdefault(tuple((k, repr(p.get(k))) for k in vary), []).append(r)
        for pt in points.values():
            v = pd.Series([float(r["value"]) for r in pt])
            p = _clean(pt[0]["params"])
            out.append(
                Row(
                    wl,
                    metric,
                    {k: p[k] for k in vary if k in p},
                    float(v.median()),
                    float(v.quantile(0.1)),
                    float(v.quantile(0.9)),
                    len(v),
                    pt[0]["unit"],
                )
            )
    return out, fixed


def medians(records: list[dict]) -> list[tuple[str, str, str, float, float, float, int, str]]:
    """(workload, metric, params, median, p10, p90, n, unit) per parameter point."""
    return [
        (r.workload, r.metric, units.human_params(r.params), r.median, r.p10, r.p90, r.n, r.unit)
        for r in rows(records)[0]
    ]


# --- findings: what a user came for, in words and numbers, with the slide claim each answers --
@dataclass
class Finding:
    workload: str
    claim: str  # the slide line it answers ("" for the harness's own check)
    text: str


OVERHEAD_MEANING = (
    "a whole container's life in cowlab (create, remove, the deferred deletion) ÷ the "
    "kernel's own work for it (mkdirs, mount, umount, rmdirs), timed in turn on the same "
    "image; 1× = cowlab adds nothing, target ≤ 1.25×; floor check = the floor ÷ the same "
    "syscalls from a libc loop (≈ 1×)"
)


def _med(df: pd.DataFrame, workload: str, metric: str, **params) -> float | None:
    if df.empty or "workload" not in df:
        return None
    sel = df[(df["workload"] == workload) & (df["metric"] == metric)]
    if "mode" in sel:
        sel = sel[sel["mode"].fillna("primitive") == "primitive"]
    for k, v in params.items():
        if k not in sel:
            return None
        sel = sel[sel[k].isna()] if v is None else sel[sel[k] == v]
    return float(sel["value"].median()) if len(sel) else None


def _vals(df: pd.DataFrame, workload: str, metric: str, col: str) -> list:
    if df.empty or col not in df:
        return []
    sel = df[(df["workload"] == workload) & (df["metric"] == metric)][col].dropna()
    return sorted(sel.unique().tolist())


def _claim(workload: str) -> str:
    from cowlab.measure.workloads import WORKLOADS

    w = WORKLOADS.get(workload)
    return w.claim if w is not None else ""


def findings(records: list[dict]) -> list[Finding]:
    """The headline of each workload that ran, computed from its medians (primitive mode), then
    the engine's, then the harness overhead."""
    df = frame([r for r in records if r.get("mode", "primitive") == "primitive"])
    hs, hb, t, x = units.human_seconds, units.human_bytes, units.human_seconds, units.number
    out: list[Finding] = []

    sizes = _vals(df, "creation", "create_seconds", "image_size_bytes")
    if sizes:
        lo, hi = int(sizes[0]), int(sizes[-1])
        a = _med(df, "creation", "create_seconds", image_size_bytes=lo, layers=1)
        b = _med(df, "creation", "create_seconds", image_size_bytes=hi, layers=1)
        parts = []
        if a is not None and b is not None and hi != lo:
            parts.append(f"create {t(a)} at {hb(lo)}, {t(b)} at {hb(hi)} ({x(b / a)}× for {hi // lo}× the data)")
        elif a is not None:
            parts.append(f"create {t(a)} at {hb(lo)}")
        layers = [int(n) for n in _vals(df, "creation", "create_seconds", "layers")]
        if len(layers) > 1:
            c = _med(df, "creation", "create_seconds", image_size_bytes=lo, layers=layers[-1])
            if c is not None:
                parts.append(f"{t(c)} with {layers[-1]} layers")
        if parts:
            out.append(Finding("creation", _claim("creation"), "; ".join(parts)))

    ev = {e: _med(df, "space", "space_bytes", event=e) for e in ("write_new_1KiB", "append_1KiB_to_64MiB")}
    if any(v is not None for v in ev.values()):
        parts = []
        if ev["write_new_1KiB"] is not None:
            parts.append(f"a new 1 KiB file took {hb(ev['write_new_1KiB'])}")
        if ev["append_1KiB_to_64MiB"] is not None:
            parts.append(f"1 KiB appended to a 64 MiB image file took {hb(ev['append_1KiB_to_64MiB'])}")
        out.append(Finding("space", _claim("space"), "; ".join(parts)))

    fs = _vals(df, "copyup", "copyup_seconds", "file_size_bytes")
    if fs:
        big = int(fs[-1])
        per = []
        for b in _vals(df, "copyup", "copyup_seconds", "backing_fs"):
            v = (
                _med(
                    df,
                    "copyup",
                    "copyup_seconds",
                    op="append_1B",
                    cache="cold",
                    file_size_bytes=big,
                    backing_fs=b,
                    metacopy=None,
                )
                if "metacopy" in df
                else _med(
                    df, "copyup", "copyup_seconds", op="append_1B", cache="cold", file_size_bytes=big, backing_fs=b
                )
            )
            if v is not None:
                per.append(f"{t(v)} on {b}")
        small = _med(df, "copyup", "copyup_seconds", op="append_1B", cache="cold", file_size_bytes=int(fs[0]))
        if per:
            text = f"first 1-byte append to a {hb(big)} file (cold): {', '.join(per)}"
            if small is not None and len(fs) > 1:
                text += f"; {t(small)} at {hb(int(fs[0]))}"
            out.append(Finding("copyup", _claim("copyup"), text))

    ls = [int(n) for n in _vals(df, "lookup", "lookup_seconds", "layers")]
    if ls:
        cold = [(n, _med(df, "lookup", "lookup_seconds", kind="miss", cache="cold", layers=n)) for n in ls]
        warm = _med(df, "lookup", "lookup_seconds", kind="miss", cache="warm", layers=ls[-1])
        cold = [(n, v) for n, v in cold if v is not None]
        if cold:
            dirs = _vals(df, "lookup", "lookup_seconds", "path_dirs")
            over = f" over {int(dirs[-1])} PATH dirs" if dirs else ""
            text = f"a cold miss{over}: " + ", ".join(f"{t(v)} at {n} layer{'s' * (n > 1)}" for n, v in cold)
            if warm is not None:
                text += f"; warm: {t(warm)} at {ls[-1]}"
            out.append(Finding("lookup", _claim("lookup"), text))

    ks = [int(k) for k in _vals(df, "density", "page_cache_bytes", "containers")]
    if ks:
        pc = [(k, _med(df, "density", "page_cache_bytes", containers=k)) for k in (ks[0], ks[-1])]
        de = [(k, _med(df, "density", "dentry_count", containers=k)) for k in (ks[0], ks[-1])]
        parts = []
        if all(v is not None for _, v in pc):
            parts.append("page cache " + " vs ".join(f"{hb(v)} for {k}" for k, v in pc) + " container(s)")
        dentries = [v for _, v in de if v is not None]
        if len(dentries) == len(de):
            parts.append("dentries " + " → ".join(units.count(v) for v in dentries))
        if parts:
            out.append(Finding("density", _claim("density"), "; ".join(parts)))

    if "job" in df and "target" in df:
        parts = []
        for job in ("seq-write-1m", "first-write"):
            c = _med(df, "io", "fio_bw_bytes_per_s", job=job, target="container")
            v = _med(df, "io", "fio_bw_bytes_per_s", job=job, target="volume")
            if c is not None and v is not None:
                parts.append(f"{job} {hb(c)}/s in the container vs {hb(v)}/s on a volume")
        if parts:
            out.append(Finding("io", _claim("io"), "; ".join(parts)))

    if "event" in df:
        imp = _med(df, "inodes", "inodes_used", event="import")
        cr = _med(df, "inodes", "inodes_used", event="create")
        if imp is not None and cr is not None:
            links = _med(df, "inodes", "hard_links", event="import")
            out.append(
                Finding(
                    "inodes",
                    _claim("inodes"),
                    f"inodes: {units.count(imp)} to import the image, {units.count(cr)} per container"
                    + (f"; hard links between its layers: {units.count(links)}" if links is not None else ""),
                )
            )

    out += [Finding("engine", "", line) for line in engine_headlines(records)]

    ov = overhead(records)
    if ov:
        out.append(
            Finding(
                "harness",
                "",
                ", ".join(f"{x(r)}× at {n} layer{'s' * (n > 1)} ({hs(c)} vs {hs(f)})" for n, (r, c, f) in ov.items())
                + "; floor check "
                + ", ".join(f"{x(v)}×" for v in floor_check(records).values()),
            )
        )
    return out


def overhead(records: list[dict]) -> dict[int, tuple[float, float, float]]:
    """layers → (ratio, create+remove, floor) at the smallest image: the paired measurement of
    mount_floor where present, else creation's create + remove medians against the floor."""
    df = frame([r for r in records if r.get("mode", "primitive") == "primitive"])
    f = df[df["workload"] == "mount_floor"] if "workload" in df else df
    if f.empty:
        return {}
    size = f["image_size_bytes"].min()
    out = {}
    for n in sorted(int(v) for v in f["layers"].unique()):
        floor = _med(df, "mount_floor", "container_floor_seconds", image_size_bytes=size, layers=n)
        pair = _med(df, "mount_floor", "cowlab_container_seconds", image_size_bytes=size, layers=n)
        if floor and pair:
            out[n] = (pair / floor, pair, floor)
    return out


def floor_check(records: list[dict]) -> dict[int, float]:
    """layers → the floor's median ÷ the same syscalls' median from a libc (ctypes) loop: near
    1× when the floor is the kernel's and nothing of Python's; off by more, the floor drifted."""
    df = frame([r for r in records if r.get("mode", "primitive") == "primitive"])
    f = df[df["workload"] == "mount_floor"] if "workload" in df else df
    out: dict[int, float] = {}
    if f.empty:
        return out
    size = f["image_size_bytes"].min()
    for n in sorted(int(v) for v in f["layers"].unique()):
        py = _med(df, "mount_floor", "container_floor_seconds", image_size_bytes=size, layers=n)
        lc = _med(df, "mount_floor", "container_floor_libc_seconds", image_size_bytes=size, layers=n)
        if py and lc:
            out[n] = py / lc
    return out


def headlines(records: list[dict]) -> list[str]:
    """The findings as one line each (for logs and tests)."""
    return [f.text for f in findings(records)]


# --- rendering: the end-of-run summary and `cowlab show` -------------------------------------
def render_findings(
    console: Console, records: list[dict], title: str, table_file: str | None, show_cmd: str | None
) -> None:
    """What a user reads at the end of a run: one screen (≤ 40 lines at 80 columns). Each
    finding is the slide claim it answers (one line, cut to the width) and the numbers."""
    from rich.text import Text

    width = console.width
    console.print(Text(title, style="bold"))
    fs = findings(records)
    for f in [f for f in fs if f.workload != "harness"] + [f for f in fs if f.workload == "harness"]:
        if f.workload == "harness":
            head = Text("• harness overhead (cowlab's own cost: its container ÷ the kernel's floor)", style="bold")
        else:
            head = Text(f"• {f.workload}", style="bold")
            if f.claim:
                head.append(f': "{f.claim}"')
        head.truncate(width - 1, overflow="ellipsis")
        console.print(head, no_wrap=True)
        _indented(console, f.text)
    if any(f.workload == "harness" for f in fs):
        _indented(console, OVERHEAD_MEANING, style="dim")
    bad: dict[str, list[str]] = {}
    for r in records:
        if r["status"] != "ok":
            bad.setdefault(f"{r['status']}: {r.get('error', '')}", []).append(r["workload"])
    for i, (msg, wls) in enumerate(bad.items()):
        if i == 3:
            console.print(Text(f"  … and {len(bad) - 3} more (see the table)", style="yellow"))
            break
        line = Text(f"  {msg} ({len(wls)} sample{'s' * (len(wls) > 1)})", style="yellow")
        line.truncate(width - 1, overflow="ellipsis")
        console.print(line, no_wrap=True)
    spent = time_spent(records)
    if spent:
        _indented(console, spent, style="dim")
    if table_file:
        console.print(Text(f"full table: {table_file}"), soft_wrap=True)
    if show_cmd:
        console.print(Text(f"print it again: {show_cmd}"), soft_wrap=True)


def time_spent(records: list[dict], top: int = 5) -> str:
    """Where a run's time went, from its workload_wall_seconds: the largest parts first."""
    parts: dict[str, float] = {}
    for r in records:
        if r["metric"] == "workload_wall_seconds" and r.get("value") is not None:
            of = r["params"].get("of", "?")
            parts[of] = parts.get(of, 0.0) + r["value"]
    if not parts:
        return ""
    big = sorted(parts.items(), key=lambda kv: -kv[1])
    shown = [f"{k} {units.human_seconds(v)}" for k, v in big[:top]]
    rest = sum(v for _, v in big[top:])
    if rest:
        shown.append(f"{len(big) - top} more {units.human_seconds(rest)}")
    return f"time: {', '.join(shown)} (of {units.human_seconds(sum(parts.values()))})"


def _indented(console: Console, text: str, style: str = "") -> None:
    """Wrapped at the console's width, indented by 4, without padding lines with spaces, and
    never between a number and its unit ("64 MiB" stays on one line)."""
    import textwrap

    from rich.text import Text

    glued = re.sub(r"(\d) (?=(?:[KMGT]i)?B\b|[mµ]?s\b|min\b|h\b|%)", "\\1\u00a0", text)
    for line in textwrap.wrap(glued, width=max(console.width - 5, 20), break_on_hyphens=False):
        console.print(Text("    " + line.replace("\u00a0", " "), style=style), no_wrap=True)


def render_table(console: Console, records: list[dict], title: str = "") -> None:
    """Every median of the run, one section per workload, params shown only where they vary."""
    rs, fixed = rows(records)
    t = Table("metric", "params", "median", "p10–p90", "n", title=title or None, expand=False)
    last = None
    for r in rs:
        if r.workload != last:
            if last is not None:
                t.add_section()
            same = units.human_params(fixed.get(r.workload, {}))
            t.add_row(f"[bold]{escape(r.workload)}[/]" + (f" [dim]({escape(same)})[/]" if same else ""), "", "", "", "")
            last = r.workload
        t.add_row(
            escape(r.metric),
            escape(units.human_params(r.params)),
            units.human_value(r.median, r.unit),
            f"{units.human_value(r.p10, r.unit)} – {units.human_value(r.p90, r.unit)}",
            str(r.n),
        )
    console.print(t)


# --- engine mode (cowlab.measure.engine) -------------------------------------------------------------
def _creation_medians(records: list[dict], mode: str) -> dict[tuple[int, int], dict[str, float]]:
    """(image_size_bytes, layers) → {metric: median} for one mode's creation samples."""
    out: dict[tuple[int, int], dict[str, list[float]]] = {}
    for r in records:
        if (
            r["status"] != "ok"
            or r.get("mode", "primitive") != mode
            or r["workload"] != "creation"
            or "image_size_bytes" not in r["params"]
        ):
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
        for line in (
            (rj.parent / "samples.jsonl").read_text().splitlines() if (rj.parent / "samples.jsonl").exists() else []
        ):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if (
                r.get("mode", "primitive") == "primitive"
                and r.get("workload") == "creation"
                and r.get("status") == "ok"
            ):
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
        rows.append(
            {
                "image_size_bytes": key[0],
                "layers": key[1],
                "primitive_create": pc,
                "engine_create": ec,
                "engine_start": e.get("start_seconds"),
                "engine_run": er,
                "engine_remove": e.get("remove_seconds"),
                "create_difference": (ec - pc) if ec is not None and pc is not None else None,
                "storage_share_of_run": (pc / er) if pc is not None and er else None,
            }
        )
    return rows


def engine_headlines(records: list[dict]) -> list[str]:
    hb, t = units.human_bytes, units.human_seconds
    lines = []
    for r in records:
        if r.get("mode") == "engine" and r["metric"] == "engine_start_seconds" and r["status"] != "ok":
            lines.append(f"engine: dockerd refused the driver: {r.get('error', '')}")
    rows = engine_vs_primitive(records)
    one = [r for r in rows if r["layers"] == 1 and r["engine_create"] is not None]
    if len(one) > 1:
        lo, hi = one[0], one[-1]
        lines.append(
            f"docker create {t(hi['engine_create'])} at {hb(hi['image_size_bytes'])}, "
            f"{t(lo['engine_create'])} at {hb(lo['image_size_bytes'])} "
            f"({units.number(hi['engine_create'] / lo['engine_create'])}×)"
        )
    for r in one[:1]:
        if r["create_difference"] is not None and r["engine_run"]:
            lines.append(
                f"at {hb(r['image_size_bytes'])}: docker create {t(r['engine_create'])} = storage "
                f"{t(r['primitive_create'])} + engine {t(r['create_difference'])}; `docker run true` "
                f"{t(r['engine_run'])}, of which storage {100 * r['storage_share_of_run']:.1f}%"
            )
    return lines


def render_engine_table(console: Console, records: list[dict], fallback: list[dict], note: str, driver: str) -> None:
    """Engine mode: docker create/start/run next to cowlab's own create, and the difference."""
    if not any(r.get("mode") == "engine" for r in records):
        return
    rs = engine_vs_primitive(records, fallback)
    if not rs:
        return
    t = Table(
        "image size",
        "layers",
        "primitive create",
        "engine create",
        "engine start",
        "engine run",
        "create: engine − primitive",
        "storage share of run",
        title=f"{driver}: engine vs storage (medians){note}",
    )
    ms = lambda v: "—" if v is None else units.human_seconds(v)
    for r in rs:
        share = "—" if r["storage_share_of_run"] is None else f"{100 * r['storage_share_of_run']:.1f}%"
        t.add_row(
            units.human_bytes(r["image_size_bytes"]),
            str(r["layers"]),
            ms(r["primitive_create"]),
            ms(r["engine_create"]),
            ms(r["engine_start"]),
            ms(r["engine_run"]),
            ms(r["create_difference"]),
            share,
        )
    console.print(t)
