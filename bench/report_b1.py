"""B1 of the benchmark report: QAT/float training step time before and after the BN freeze."""

from __future__ import annotations

import numpy as np

import common
import op_profile

from report_common import TARGETS, TFMOT_LABEL, _image, _judge, _ms, _plt, _save, _table


def step_ratios(entry):
    """{label: median per-round ratio stats vs its own tool's float step} for one B1 model."""
    ours = entry["tfqat"]["times"]
    ratios = {label: common.ratio_stats(ours[label], ours["float"]) for label in ours if label != "float"}
    if entry.get("tfmot"):
        theirs = entry["tfmot"]["times"]
        ratios[TFMOT_LABEL] = common.ratio_stats(theirs["tfmot"], theirs["float"])
    return ratios



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
