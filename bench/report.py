"""Turns bench/run.py's results into BENCHMARKS.md, its PNG plots and a JSON copy.

Every figure in the markdown comes from the results dict; the only fixed
numbers here are the targets the issue set.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib

import numpy as np

import common

from report_b1 import _b1, _post_freeze_miss, _pre_freeze_miss, plot_profile, plot_step_ratios, step_ratios
from report_b2_b3 import _accuracy_miss, _b2_b3, _fidelity_miss, accuracy_summary, plot_accuracy, plot_fidelity
from report_b4 import _b4, _latency_miss, _size_miss, plot_size_latency
from report_b5 import _b5, plot_tool_times
from report_common import TARGETS, _pct, _plt, _table, _verdict


def evaluate_targets(results):
    """[(section, target, model, measured text, met or None, kind, near)] for the summary table.

    `near`: a missed ratio target that lies inside the measurement's interquartile range.
    """
    rows = []
    for key, entry in results["b1"].items():
        ratios = step_ratios(entry)
        for label, target_key, bound in (("tfqat before freeze", "pre_freeze", f"≤ {TARGETS['pre_freeze']}"),
                                         ("tfqat after freeze", "post_freeze", f"≤ {TARGETS['post_freeze']}")):
            stats = ratios[label]
            rows.append(("B1", f"QAT/float step time {label.split(' ', 1)[1]} {bound}", key,
                         f"{stats['median']:.2f} (IQR {stats['q1']:.2f}–{stats['q3']:.2f})",
                         stats["median"] <= TARGETS[target_key], target_key,
                         stats["q1"] <= TARGETS[target_key]))
    summary = accuracy_summary(results["b2"])
    for model, row in summary.items():
        if "tfmot int8" not in row:
            rows.append(("B2", "int8 accuracy ≥ TFMOT's", model,
                         f"{_pct(row['tfqat int8'])} % vs not measured", None, "accuracy", False))
            rows.append(("B3", "fidelity ≥ TFMOT's", model, "TFMOT not measured", None,
                         "fidelity", False))
            continue
        ours, theirs = np.mean(row["tfqat int8"]), np.mean(row["tfmot int8"])
        rows.append(("B2", "int8 accuracy ≥ TFMOT's", model,
                     f"{_pct(row['tfqat int8'])} % vs {_pct(row['tfmot int8'])} %",
                     bool(ours >= theirs), "accuracy", False))
        agree = (np.mean(row["tfqat agreement"]), np.mean(row["tfmot agreement"]))
        lsb = (np.mean(row["tfqat mean_lsb"]), np.mean(row["tfmot mean_lsb"]))
        rows.append(("B3", "fidelity ≥ TFMOT's (agreement ≥, mean LSB ≤)", model,
                     f"{100 * agree[0]:.2f} % / {lsb[0]:.3f} LSB vs "
                     f"{100 * agree[1]:.2f} % / {lsb[1]:.3f} LSB",
                     bool(agree[0] >= agree[1] and lsb[0] <= lsb[1]), "fidelity", False))
    for key, entry in results["b4"].items():
        ratio = entry["size_int8"] / entry["size_float"]
        rows.append(("B4", f"int8 size ≤ {TARGETS['size']}× float", key, f"{ratio:.3f}×",
                     ratio <= TARGETS["size"], "size", False))
        for threads, measured in entry["latency"].items():
            stats = measured["ratios"]["tfqat int8"]
            rows.append(("B4", f"int8 latency ≤ {TARGETS['latency']}× float, {threads} thread(s)", key,
                         f"{stats['median']:.2f}× (IQR {stats['q1']:.2f}–{stats['q3']:.2f})",
                         stats["median"] <= TARGETS["latency"], "latency",
                         stats["q1"] <= TARGETS["latency"]))
    return rows



PLOTS = (("b1_step_ratio.png", plot_step_ratios), ("b1_profile.png", plot_profile),
         ("b2_accuracy.png", plot_accuracy), ("b3_fidelity.png", plot_fidelity),
         ("b4_size_latency.png", plot_size_latency), ("b5_tool_times.png", plot_tool_times))



def make_plots(results, plots_dir):
    """Writes the PNG plots; returns ({file name: path}, None), or ({}, why) without matplotlib."""
    try:
        _plt()
    except ImportError:
        return {}, "matplotlib is not installed, so no plots were drawn (pip install matplotlib)."
    plots_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, function in PLOTS:
        function(results, plots_dir / name)
        made[name] = plots_dir / name
    return made, None



def write(results, output, plots_dir):
    """Writes the markdown report, and the plots and results.json into `plots_dir`."""
    output, plots_dir = pathlib.Path(output), pathlib.Path(plots_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    plots, plot_note = make_plots(results, plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    json_path = plots_dir / "results.json"
    common.atomic_write(json_path, json.dumps(results, indent=1))
    relative = {n: os.path.relpath(p, output.parent) for n, p in plots.items()}
    relative["results.json"] = os.path.relpath(json_path, output.parent)
    common.atomic_write(output, keep_real_data_section(output, render(results, relative, plot_note)))



REAL_DATA_MARKERS = ("<!-- bench/real.py: start -->", "<!-- bench/real.py: end -->")
BN_FOLD_MARKERS = ("<!-- bench/bn_fold.py: start -->", "<!-- bench/bn_fold.py: end -->")
KEPT_SECTIONS = (REAL_DATA_MARKERS, BN_FOLD_MARKERS)



def keep_real_data_section(output, text):
    """`text` plus the sections bench/real.py and bench/bn_fold.py wrote into the old `output`,
    which this run does not measure (they would otherwise vanish on every bench/run.py run)."""
    try:
        old = pathlib.Path(output).read_text()
    except OSError:
        return text
    for start, end in KEPT_SECTIONS:
        if start in old and end in old:
            block = start + old.split(start, 1)[1].split(end, 1)[0] + end + "\n"
            text = text.rstrip("\n") + "\n\n" + block
    return text




def render(results, plots, plot_note=None):
    """The markdown text."""
    config, tfmot = results["config"], results["tfmot"]
    tfmot_note = "" if tfmot["available"] and not tfmot["note"] else \
        f"TFMOT: {tfmot['note']}. Its rows say \"not measured\"."
    out = [
        "# Benchmarks",
        "",
        f"Written by `python bench/run.py{'' if config['name'] == 'full' else ' --' + config['name']}`"
        f" on {datetime.date.today().isoformat()} (preset `{config['name']}`, "
        f"{results['total_s'] / 60:.1f} min); do not edit by hand. Performance claims are "
        "ratios measured within this one run, not timed unit tests. Raw figures: "
        f"[{plots['results.json']}]({plots['results.json']}).",
        "",
    ]
    if tfmot_note:
        out += [tfmot_note, ""]
    if plot_note:
        out += [plot_note, ""]
    out += _summary(results) + _machine(results) + _b1(results, plots) + _b2_b3(results, plots) \
        + _b4(results, plots) + _b5(results, plots) + _method(results)
    return "\n".join(out) + "\n"



def _summary(results):
    rows = evaluate_targets(results)
    out = ["## Targets", "",
           _table(["", "target", "model", "measured", "result"],
                  [(s, t, m, v, "not measured" if met is None else _verdict(met, near))
                   for s, t, m, v, met, _, near in rows]), ""]
    missed = [r for r in rows if r[4] is not None and not r[4]]
    if not missed:
        out += ["Every measured target is met.", ""]
        return out
    out += ["### Where we fall short", ""]
    kinds = sorted({r[5] for r in missed}, key=[r[5] for r in rows].index)
    for kind in kinds:
        models = list(dict.fromkeys(r[2] for r in missed if r[5] == kind))
        out += CAUSES[kind](results, models) + [""]
    return out



CAUSES = {"pre_freeze": _pre_freeze_miss, "post_freeze": _post_freeze_miss,
          "accuracy": _accuracy_miss, "fidelity": _fidelity_miss, "size": _size_miss,
          "latency": _latency_miss}



def _machine(results):
    machine, tfmot = results["machine"], results["tfmot"]
    load = machine.get("load_average_start"), machine.get("load_average_end")
    rows = [("CPU", machine["cpu"]), ("cores", machine["cores"]), ("memory", machine["memory"]),
            ("OS", machine["os"]), ("Python", machine["python"]),
            ("load average (1/5/15 min) at start / end",
             " / ".join(", ".join(f"{v:.2f}" for v in l) for l in load if l))]
    out = ["## Machine and versions", "", _table(["", ""], rows), ""]
    ours = results["versions"]
    theirs = tfmot.get("versions") or {}
    packages = list(ours) + [p for p in theirs if p not in ours]
    out += [_table(["package", "tfqat process", "TFMOT process"],
                   [(p, ours.get(p, "-"), theirs.get(p, "-")) for p in packages]), ""]
    section_s = results["section_s"]
    out += ["Section wall times: " + ", ".join(f"{k.upper()} {v:.0f} s"
                                               for k, v in section_s.items()) +
            " (B3 comes from the B2 runs, B5 from the B4 models).", ""]
    return out



def _method(results):
    return ["## How to run", "",
            "`python bench/run.py` (this file; its wall time is in the header) or "
            "`python bench/run.py --quick` (a few minutes; writes "
            "bench/results/quick/BENCHMARKS.md). TFMOT runs in bench/tfmot_worker.py under "
            "`--tfmot_python` (default: `$TFQAT_TFMOT_PYTHON`, else this interpreter if "
            "tf-keras and tensorflow-model-optimization are installed), with "
            "`TF_USE_LEGACY_KERAS=1`; the tfqat process never imports it.", ""]
