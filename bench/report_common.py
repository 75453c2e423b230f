"""Shared pieces of the benchmark report: targets, number formatting, verdicts, tables, plot helpers."""

from __future__ import annotations

import numpy as np

import common




TARGETS = {"pre_freeze": 1.6, "post_freeze": 1.15, "size": 0.27, "latency": 0.6}



TFMOT_LABEL = "TFMOT"



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



def _save(fig, path):
    """Writes a figure as PNG, atomically, and closes it."""
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _plt().close(fig)
    common.atomic_write(path, buffer.getvalue())


def _image(plots, name, alt):
    return f"![{alt}]({plots[name]})" if name in plots else ""
