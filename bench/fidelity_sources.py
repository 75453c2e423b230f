"""Where a QAT model and its .tflite's integer kernels part, op by op (issue 12, part 3).

  python bench/fidelity_sources.py --data=PATH [--output=REPORT.md] [--update_benchmarks]

A deep int8 net's output drifts from its QAT model although every op agrees within 1 LSB:
a few values per op differ by 1 LSB, and the differences compound through depth. This
script says which arithmetic makes those values differ. For every CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED of the .tflite, fed the reference kernels' own int8
input, the int32 accumulator is computed exactly and requantized in four ways, each
compared with the reference kernels' output tensor (fraction of values that differ):

  float bias, one exact rounding   what a QAT graph with a float bias computes (its output
                                   fake quant rounds once; float32 noise aside): tfqat's
                                   before inference used the int32 bias
  int32 bias, one exact rounding   the converter's int32 bias rounding added: what tfqat's
                                   QAT graph computes at inference
  int32 bias, TFLite fixed point   the reference kernels' requantization (a rounding
                                   high multiply, then a rounding shift): 0 expected
  int32 bias, XNNPACK float32      what LiteRT's default interpreter computes instead

The QAT graph itself is measured too (`op_fidelity`'s rate of 1-LSB differences per
quantizer, against the reference kernels), and end to end: top-1 agreement and mean LSB
of the QAT model with the .tflite on the reference kernels and on XNNPACK (also with the
float bias, `tfqat.nn.layers.float_bias()`, as before), and of `tfqat.evaluate_int8` with
the .tflite.

Every int8 MEAN (global pooling; LayerNormalization's mean and variance) is measured the
same way: its exact sum rounded once (the QAT graph's fake quant), the reference kernels'
fixed point (1/n folded into the multiplier, then a rounding high multiply and a rounding
right shift: 0 differences expected) and XNNPACK's float32, grouped by that right shift.

Models: ResNet-8, MobileNetV2 alpha 0.35 and vit_tiny at 32x32, trained here on CIFAR-10
(--data: as bench/real.py's) with a short schedule (3,000 images, 3 float epochs, BN
re-estimated where there is BN, 1 QAT epoch with the BN freeze halfway): about 8 minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402
import real  # noqa: E402

SECTION = ("<!-- bench/fidelity_sources.py: start -->", "<!-- bench/fidelity_sources.py: end -->")
WAYS = ("float bias, one rounding", "int32 bias, one rounding", "int32 bias, TFLite fixed point",
        "int32 bias, XNNPACK float32")
OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MEAN_WAYS = ("one exact rounding", "TFLite fixed point", "XNNPACK float32")
TRAIN, TEST, FLOAT_EPOCHS, PROBE_IMAGES = 3000, 1000, 3, 100


def train_qat(spec, data, seed=0):
    """A float model trained briefly, BN re-estimated, then 1 epoch of QAT (freeze halfway)."""
    import keras

    import tfqat
    from tfqat.calibration import batchnorm
    from tfqat.training import models

    keras.utils.set_random_seed(seed)
    model = models.build_model(spec["name"], (32, 32, 3), 10, spec["alpha"])
    steps = FLOAT_EPOCHS * common.steps_per_epoch(len(data["y_train"]), real.BATCH)
    common.compile_cosine(keras, model, real.FLOAT_LR, steps)
    common.fit_in_order(model, data["x_train"], data["y_train"],
                        common.epoch_orders(len(data["y_train"]), FLOAT_EPOCHS, seed), real.BATCH)
    if batchnorm.max_momentum(model) is not None:  # vit_tiny has no BatchNormalization
        tfqat.reestimate_batchnorm(model, data["x_train"], steps=50, batch_size=real.BATCH)
    qat_steps = common.steps_per_epoch(len(data["y_train"]), real.BATCH)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=qat_steps // 2))
    with contextlib.redirect_stderr(io.StringIO()):
        tfqat.calibrate(qat, data["x_train"][:256])
    common.compile_cosine(keras, qat, real.QAT_LR, qat_steps)
    common.fit_in_order(qat, data["x_train"], data["y_train"],
                        common.epoch_orders(len(data["y_train"]), 1, seed + 1000), real.BATCH)
    return qat


def _float_biases(qat):
    """{layer name: float64 bias the QAT graph adds} for its layers that export a bias."""
    biases = {}
    for layer in qat.layers:
        folded = getattr(layer, "folded_bias", None)
        bias = folded() if folded else None
        if bias is not None:
            biases[layer.name] = np.asarray(bias, np.float64)
    return biases


def _owner(tensor_name, names):
    """The layer whose name scope made `tensor_name` (`model/block_1_expand_1/Relu6`), or None."""
    for scope in tensor_name.split(";")[0].split("/")[:-1]:
        if scope in names:
            return scope
        base = scope.rsplit("_", 1)[0] if scope.rsplit("_", 1)[-1].isdigit() else None
        if base in names:
            return base
    return None


def _accumulator(op, x, w):
    """The exact int32 accumulator sum((x - zp) * w) (float64 sums of integers: exact)."""
    import tensorflow as tf

    if op.name == "FULLY_CONNECTED":
        return (x.reshape(-1, w.shape[1]) @ w.T.astype(np.float64))
    options = op.options
    strides = [1, options["stride_h"], options["stride_w"], 1]
    dilations = [options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)]
    kernel = np.transpose(w, (1, 2, 3, 0)).astype(np.float64)  # [out, kh, kw, in] -> HWIO
    if op.name == "CONV_2D":
        return tf.nn.conv2d(x, kernel, strides, options["padding"], dilations=dilations).numpy()
    return tf.nn.depthwise_conv2d(x, kernel, strides, options["padding"],
                                  dilations=dilations).numpy()


def requantized(op, acc, bias_int, bias_float, x_t, w_t, out_t):
    """{way: int8 output values} of the four requantizations of `acc` (see the module doc)."""
    import tensorflow as tf

    from tfqat.diagnostics import int8_eval

    w_scales = np.broadcast_to(np.asarray(w_t.scales, np.float64), (acc.shape[-1],))
    multiplier = float(x_t.scale) * w_scales / float(out_t.scale)
    low, high = int8_eval._activation_range(op, out_t)

    def finish(values):
        return np.clip(values + out_t.zero_point, low, high)

    with_int_bias = acc + bias_int
    ways = {}
    if bias_float is not None:
        ways[WAYS[0]] = finish(np.floor(acc * multiplier + bias_float / out_t.scale + 0.5))
    ways[WAYS[1]] = finish(np.floor(with_int_bias * multiplier + 0.5))
    multiply = (int8_eval.multiply_by_quantized_multiplier_single_rounding
                if op.name == "FULLY_CONNECTED" else int8_eval.multiply_by_quantized_multiplier)
    if op.name == "FULLY_CONNECTED" and not w_t.per_axis:
        mantissa, shift = int8_eval.quantize_multiplier(float(x_t.scale) * float(w_t.scale) /
                                                        float(out_t.scale))
    else:
        pairs = [int8_eval.quantize_multiplier(float(x_t.scale) * float(s) / float(out_t.scale))
                 for s in w_scales]
        mantissa, shift = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    fixed = multiply(tf.constant(np.round(with_int_bias).astype(np.int64)), mantissa, shift)
    ways[WAYS[2]] = finish(fixed.numpy())
    scale32 = (np.float32(x_t.scale) * w_scales.astype(np.float32)) / np.float32(out_t.scale)
    scaled = np.clip(with_int_bias.astype(np.float32) * scale32,
                     -128 - out_t.zero_point, 127 - out_t.zero_point)
    ways[WAYS[3]] = finish(np.round(scaled).astype(np.float64))  # numpy rounds half to even
    return ways


def reference_run(tflite, x):
    """(the .tflite read, its reference-kernel interpreter after running `x`, every tensor
    kept): what op_sources and mean_sources read."""
    from tfqat.export import reader

    model = reader.read_tflite(tflite)
    interpreter = model.interpreter(kernels="reference", preserve_all_tensors=True)
    source = model.inputs[0]
    interpreter.resize_tensor_input(source.index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source.index, reader.quantize(x, source))
    interpreter.invoke()
    return model, interpreter


def op_sources(qat, run):
    """Per op of `run` (reference_run's): its name, type, median multiplier and {way: fraction
    of values that differ from the reference kernels} ("differ") and from XNNPACK's arithmetic
    ("differ_xnnpack")."""
    model, interpreter = run
    biases = _float_biases(qat)
    rows = []
    for op in model.ops:
        if op.name not in OPS or len(op.inputs) < 3:
            continue
        x_t, w_t, b_t = op.inputs[:3]
        out_t = op.outputs[0]
        w = model.constants[w_t.index].astype(np.int64)
        if op.name == "CONV_2D" and w.shape[-1] != x_t.shape[-1]:
            continue  # grouped: not in these models
        x_int = interpreter.get_tensor(x_t.index).astype(np.float64) - x_t.zero_point
        acc = _accumulator(op, x_int, w)
        expected = interpreter.get_tensor(out_t.index).astype(np.float64).reshape(acc.shape)
        owner = _owner(out_t.name, biases)
        bias_int = model.constants[b_t.index].astype(np.float64)
        ways = requantized(op, acc, bias_int, biases.get(owner), x_t, w_t, out_t)
        multiplier = float(x_t.scale) * np.asarray(w_t.scales, np.float64) / float(out_t.scale)
        rows.append({"op": op.name, "layer": owner or out_t.name, "values": int(acc.size),
                     "median_multiplier": float(np.median(multiplier)),
                     "differ": {way: float(np.mean(values != expected))
                                for way, values in ways.items()},
                     "differ_xnnpack": {way: float(np.mean(values != ways[WAYS[3]]))
                                        for way, values in ways.items()}})
    return rows


def mean_sources(run):
    """Per int8 MEAN of `run` (reference_run's): its multiplier s_in / (s_out * n), the
    reference kernels' shift after the high multiply, and {way: fraction of values that differ
    from the reference kernels} ("differ") and from XNNPACK's float32 ("differ_xnnpack"), the
    ways being MEAN_WAYS (one exact rounding, TFLite fixed point, XNNPACK float32)."""
    import tensorflow as tf

    from tfqat.diagnostics import int8_eval

    model, interpreter = run
    rows = []
    for op in model.ops:
        if op.name != "MEAN":
            continue
        x_t, out_t = op.inputs[0], op.outputs[0]
        values = interpreter.get_tensor(x_t.index).astype(np.int64) - x_t.zero_point
        axes = np.atleast_1d(model.constants[op.inputs[1].index])
        axes = tuple(int(a) % values.ndim for a in axes)
        count = int(np.prod([values.shape[a] for a in axes]))
        expected = interpreter.get_tensor(out_t.index).astype(np.int64)
        acc = values.sum(axis=axes, keepdims=True).reshape(expected.shape)
        multiplier = float(x_t.scale) / (float(out_t.scale) * count)
        mantissa, shift = int8_eval.mean_multiplier(float(x_t.scale), float(out_t.scale), count)
        scale32 = np.float32(x_t.scale) / (np.float32(out_t.scale) * np.float32(count))
        ways = {
            MEAN_WAYS[0]: np.floor(acc * multiplier + 0.5),
            MEAN_WAYS[1]: int8_eval.multiply_by_quantized_multiplier(
                tf.constant(acc), mantissa, shift).numpy(),
            MEAN_WAYS[2]: np.round(acc.astype(np.float32) * scale32)}  # half to even
        ways = {way: np.clip(v + out_t.zero_point, -128, 127) for way, v in ways.items()}
        rows.append({"layer": out_t.name, "values": int(acc.size), "multiplier": multiplier,
                     "shift": int(shift),
                     "differ": {way: float(np.mean(v != expected)) for way, v in ways.items()},
                     "differ_xnnpack": {way: float(np.mean(v != ways[MEAN_WAYS[2]]))
                                        for way, v in ways.items()}})
    return rows


def end_to_end(qat, tflite, data):
    """QAT model vs .tflite (reference kernels and XNNPACK), evaluate_int8 vs .tflite."""
    import run as bench_run

    from tfqat.nn.layers import float_bias

    reference = qat.predict(data["x_test"], batch_size=256, verbose=0)
    with float_bias():
        qat.predict_function = None  # traced again, with the float bias
        before = qat.predict(data["x_test"], batch_size=256, verbose=0)
    qat.predict_function = None
    scores = {}
    for kernels in ("reference", "xnnpack"):
        int8_eval, lite = real.int8_eval_vs_tflite(tflite, data["x_test"], kernels)
        fidelity = real.fidelity_summary(bench_run.outputs_fidelity(reference, lite,
                                                                    data["y_test"]))
        float_fidelity = bench_run.outputs_fidelity(before, lite, data["y_test"])
        scores[kernels] = {
            "float_bias_agreement": float_fidelity["agreement"],
            "float_bias_mean_lsb": float_fidelity["mean_lsb"],
            "qat_agreement": fidelity["agreement"], "qat_mean_lsb": fidelity["mean_lsb"],
            "qat_disagreements_within_1_lsb": fidelity["disagreements_within_1_lsb"],
            "qat_disagreements": fidelity["disagreements"],
            "int8_eval_top1": int8_eval["top1"],
            "int8_eval_identical": int8_eval["identical_outputs"]}
    return scores


def qat_graph_rate(qat, tflite, x):
    """Mean over quantizers of op_fidelity's 1-LSB difference rate, against the reference
    kernels (each quantizer fed the .tflite's own tensors)."""
    from tfqat.diagnostics import fidelity

    result = fidelity.op_fidelity(qat, tflite, x, kernels="reference")
    return {"quantizers": result.num_checked, "max_lsb": result.max_diff_lsb,
            "mean_rate": float(np.mean([d.mean_diff_lsb for d in result.diffs]))}


def _mean_table(rows):
    """Rows of the requantization table for the MEAN ops, grouped by their right shift."""
    out = []
    for shift in sorted({min(r["shift"], 0) for r in rows}, reverse=True):  # >= 0: one rounding
        group = [r for r in rows if min(r["shift"], 0) == shift]
        values = sum(r["values"] for r in group)

        def rate(key, way):
            return 100 * sum(r[key][way] * r["values"] for r in group) / values
        low, high = (f"{m:.3g}" for m in (min(r["multiplier"] for r in group),
                                          max(r["multiplier"] for r in group)))
        what = "no right shift" if shift == 0 else f"right shift {-shift}"
        ops = f"{len(group)} op" + ("s" if len(group) > 1 else "")
        out.append(f"| MEAN, {what} after the high multiply ({ops}, s_in/(s_out·n) "
                   f"{low if low == high else f'{low}–{high}'}), one exact rounding "
                   f"(TFLite fixed point: {rate('differ', MEAN_WAYS[1]):.2f} %) | "
                   f"{rate('differ', MEAN_WAYS[0]):.2f} % | "
                   f"{rate('differ_xnnpack', MEAN_WAYS[0]):.2f} % |")
    return out


def render(results):
    out = ["## Where the QAT model and the integer kernels part (bench/fidelity_sources.py)", "",
           "Written by `python bench/fidelity_sources.py --data=…` "
           f"({results['total_s'] / 60:.1f} min on {results['cores']} cores shared with other "
           f"jobs). Each model: {TRAIN} CIFAR-10 training images, {FLOAT_EPOCHS} float epochs, "
           "BN re-estimated (where there is BN), 1 QAT epoch (BN freeze halfway); "
           f"{TEST} test images end to end, {PROBE_IMAGES} for the per-op counts. Per op, each "
           "requantization of the exact int32 accumulator (fed the "
           "reference kernels' own int8 input) is compared with the reference kernels' output "
           "tensor: the share of output values that differ (all differences are 1 LSB).", ""]
    for model, entry in results["models"].items():
        rows = entry["ops"]
        weights = np.array([r["values"] for r in rows], np.float64)
        op_types = ", ".join(sorted({r["op"] for r in rows}))
        multiplier = np.median([r["median_multiplier"] for r in rows])
        out += [f"### {model}", "", f"{len(rows)} ops ({op_types}), median multiplier "
                f"s_in·s_w/s_out {multiplier:.4f}.",
                "", "| requantization | values that differ from the reference kernels | "
                "from XNNPACK's arithmetic |", "| --- | --- | --- |"]

        def rate(way, key):
            measured = [(r[key][way], w) for r, w in zip(rows, weights) if way in r[key]]
            return 100 * sum(d * w for d, w in measured) / sum(w for _, w in measured)
        for way in WAYS:
            ops = sum(way in r["differ"] for r in rows)
            out.append(f"| {way} ({ops} ops) | {rate(way, 'differ'):.3f} % | "
                       f"{rate(way, 'differ_xnnpack'):.3f} % |")
        out += _mean_table(entry["means"])
        graph = entry["qat_graph"]
        out += [f"| the QAT graph itself (op_fidelity, {graph['quantizers']} quantizers, max "
                f"{graph['max_lsb']:.0f} LSB) | {100 * graph['mean_rate']:.3f} % | |", "",
                "| end to end | reference kernels | XNNPACK |", "| --- | --- | --- |"]
        ref, xnn = entry["end_to_end"]["reference"], entry["end_to_end"]["xnnpack"]
        out += [f"| QAT model with a float bias vs .tflite: top-1 agreement, mean output LSB | "
                f"{100 * ref['float_bias_agreement']:.2f} %, {ref['float_bias_mean_lsb']:.3f} | "
                f"{100 * xnn['float_bias_agreement']:.2f} %, {xnn['float_bias_mean_lsb']:.3f} |",
                f"| QAT model vs .tflite: top-1 agreement | {100 * ref['qat_agreement']:.2f} % | "
                f"{100 * xnn['qat_agreement']:.2f} % |",
                f"| QAT model vs .tflite: mean output LSB | {ref['qat_mean_lsb']:.3f} | "
                f"{xnn['qat_mean_lsb']:.3f} |",
                f"| disagreeing images where the QAT top-2 margin is under 1 output LSB | "
                f"{ref['qat_disagreements_within_1_lsb']} of {ref['qat_disagreements']} | "
                f"{xnn['qat_disagreements_within_1_lsb']} of {xnn['qat_disagreements']} |",
                f"| evaluate_int8 vs .tflite: top-1 agreement | "
                f"{100 * ref['int8_eval_top1']:.2f} % | {100 * xnn['int8_eval_top1']:.2f} % |",
                f"| evaluate_int8 vs .tflite: identical int8 outputs | "
                f"{100 * ref['int8_eval_identical']:.2f} % | "
                f"{100 * xnn['int8_eval_identical']:.2f} % |",
                ""]
    out += ["At inference tfqat's QAT graph adds the bias on the converter's int32 grid: the "
            "\"int32 bias, one rounding\" row, which is XNNPACK's arithmetic. The \"float bias\" "
            "row is what it computed before; the end-to-end row \"with a float bias\" measures "
            "that graph (`tfqat.nn.layers.float_bias()`). Against the reference and builtin "
            "kernels the two-rounding requantization remains (\"TFLite fixed point\"); "
            "`evaluate_int8(kernels=\"reference\")` computes it exactly. Their MEAN rounds "
            "twice too, and coarsely where its multiplier s_in/(s_out·n) is under 0.5: the "
            "high multiply rounds to 2^-k of an output LSB before a right shift by k, and "
            "about 2^-(k+1) of the outputs move by 1 LSB (k = 1: a quarter). LayerNormalization's "
            "mean and variance have such multipliers (n = the features): on vit_tiny they are "
            "most of what the QAT graph misses on the reference kernels (the \"QAT graph "
            "itself\" row). XNNPACK's MEAN rounds once, as the QAT graph does. "
            "docs/design.md, \"Fidelity on deep nets\", says why.", ""]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz, as bench/real.py's --data")
    parser.add_argument("--output", default=str(BENCH / "results" / "fidelity_sources.md"))
    parser.add_argument("--update_benchmarks", action="store_true",
                        help="also write the section into BENCHMARKS.md")
    args = parser.parse_args(argv)
    arrays = real.load_cifar10(args.data)  # bad --data fails here, before any training
    config = real.Config("fidelity", [], [0], train=TRAIN, validation=0, test=TEST,
                         float_epochs=FLOAT_EPOCHS, qat_epochs=1)
    data = real.split(arrays, config, 0)
    started = time.perf_counter()
    results = {"models": {}, "cores": os.cpu_count()}
    for spec in (real.RESNET8, real.MOBILENET, real.VIT):
        print(f"[fidelity_sources] {spec['key']} ...", file=sys.stderr, flush=True)
        qat = train_qat(spec, data)
        tflite = real._export(qat)
        probe = data["x_test"][:PROBE_IMAGES]
        run = reference_run(tflite, probe)
        results["models"][spec["key"]] = {"ops": op_sources(qat, run),
                                          "means": mean_sources(run),
                                          "qat_graph": qat_graph_rate(qat, tflite, probe),
                                          "end_to_end": end_to_end(qat, tflite, data)}
    results["total_s"] = time.perf_counter() - started
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    common.atomic_write(output.with_suffix(".json"), json.dumps(results, indent=1))
    section = render(results)
    common.atomic_write(output, section)
    if args.update_benchmarks:
        real.update_benchmarks(section, markers=SECTION)
    print(f"[fidelity_sources] wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
