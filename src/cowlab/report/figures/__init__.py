"""Figures and the sentences beside them, shared by the notebooks and `cowlab report` (one place,
so every notebook agrees): `from cowlab.report import figures`.

All helpers take the frame `cowlab.results.load()` returns (one row per sample). They:

* summarise with medians and p10–p90 (`summarize`), never means;
* give each driver the same colour everywhere (`driver_color`);
* never pool emulated (TCG) rows with native ones: emulated rows become their own series,
  dashed and labelled "<driver> (emulated)", and the legend says so;
* say when data is missing instead of failing (`ratio_sentence` returns a sentence, a plot
  without data shows "no data").

The modules, along their seams: `axes` (colours, units, axis formats), `data` (the samples
behind a figure), `sentences` (what a figure says in words), `panels` (the figure functions
every question uses) and `questions` (one figure per question: per host, space, engine, fio).

Importable without a display: outside a Jupyter kernel, matplotlib gets the Agg backend (unless
MPLBACKEND chooses one). Nothing here calls plt.show().
"""

from __future__ import annotations

import os
import sys

import matplotlib

# Before any submodule imports pyplot: the backend is chosen once, at the first import.
if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

from cowlab.report.figures.axes import (  # noqa: E402
    ALL_EMULATED_NOTE,
    DRIVER_COLORS,
    EMULATED_NOTE,
    FLOOR_COLOR,
    LOG_DECADES,
    MIXED_TIME_DECADES,
    PRETTY_NAMES,
    driver_color,
    human_bytes,
    human_seconds,
    human_value,
    human_x,
    pretty_name,
    series_label,
)
from cowlab.report.figures.bars import HATCHES, bars_by_driver  # noqa: E402
from cowlab.report.figures.data import (  # noqa: E402
    BENCH_DRIVERS,
    bench_command,
    driver_series,
    drivers_text,
    is_emulated,
    no_results_text,
    param_values,
    per_extra,
    results_dir,
    runs_table,
    series_rows,
    summarize,
    workload_data,
)
from cowlab.report.figures.panels import (  # noqa: E402
    BLANK,
    FEW_SAMPLES,
    emulation_note,
    line_by_driver,
    line_panels,
    overhead_bars,
    reference_line,
)
from cowlab.report.figures.questions import (  # noqa: E402
    ENGINE_OPS,
    SPACE_EVENTS,
    bars_panels,
    density_guides,
    engine_split,
    engine_split_figure,
    engine_split_sentences,
    engine_split_table,
    host_panels,
    hosts_in,
    io_figure,
    space_figure,
)
from cowlab.report.figures.sentences import (  # noqa: E402
    METRIC_PHRASES,
    PREPOSITIONS,
    compare_sentence,
    driver_ratio_sentence,
    growth_sentence,
    largest_common_compare,
    ratio_sentence,
    span_sentence,
)

__all__ = [
    "ALL_EMULATED_NOTE",
    "DRIVER_COLORS",
    "EMULATED_NOTE",
    "FLOOR_COLOR",
    "LOG_DECADES",
    "MIXED_TIME_DECADES",
    "PRETTY_NAMES",
    "driver_color",
    "human_bytes",
    "human_seconds",
    "human_value",
    "human_x",
    "pretty_name",
    "series_label",
    "BENCH_DRIVERS",
    "bench_command",
    "driver_series",
    "drivers_text",
    "is_emulated",
    "no_results_text",
    "param_values",
    "per_extra",
    "results_dir",
    "runs_table",
    "series_rows",
    "summarize",
    "workload_data",
    "BLANK",
    "FEW_SAMPLES",
    "HATCHES",
    "bars_by_driver",
    "emulation_note",
    "line_by_driver",
    "line_panels",
    "overhead_bars",
    "reference_line",
    "ENGINE_OPS",
    "SPACE_EVENTS",
    "bars_panels",
    "density_guides",
    "engine_split",
    "engine_split_figure",
    "engine_split_sentences",
    "engine_split_table",
    "host_panels",
    "hosts_in",
    "io_figure",
    "space_figure",
    "METRIC_PHRASES",
    "PREPOSITIONS",
    "compare_sentence",
    "driver_ratio_sentence",
    "growth_sentence",
    "largest_common_compare",
    "ratio_sentence",
    "span_sentence",
]
