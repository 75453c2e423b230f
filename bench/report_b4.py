"""B4 of the benchmark report: int8/float .tflite size and latency."""

from __future__ import annotations

from report_common import TARGETS, TFMOT_LABEL, _bar_groups, _image, _judge, _ms, _plt, _save, _table, _verdict


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
