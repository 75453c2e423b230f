"""B5 of the benchmark report: tool times (quantize, export) against TFMOT's."""

from __future__ import annotations

from report_common import _bar_groups, _image, _plt, _save, _table


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
