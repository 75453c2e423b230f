"""Real data: CIFAR-10 float vs converter PTQ vs tfqat PTQ vs tfqat QAT (vs TFMOT QAT).

  python bench/real.py --data=PATH [--quick | --medium] [--output=REPORT.md]
                       [--tfmot_python=PY] [--update_benchmarks]

--data is CIFAR-10 as an .npz: either decoded arrays (x_train, y_train, x_test, y_test,
uint8 images), e.g. from `python ../shared/data/cifar10.py cifar10.npz`, or the project's
JPEG copy `../shared/data/cifar10_jpeg.npz` itself, which is decoded once with the
cifar10.py beside it and cached under the temp dir. Users with internet can write such a file
from keras.datasets.cifar10.load_data().

Models: ResNet-8 (MLPerf Tiny), MobileNetV2 alpha 0.35 and vit_tiny, all at 32x32. Rows per model:
float (Keras), converter PTQ (TFLiteConverter + representative dataset), tfqat PTQ
(`tfqat.calibrate`, the best of minmax / percentile / entropy on a validation split), tfqat
QAT (a few epochs from the float weights, BN freeze halfway), TFMOT QAT (same float weights,
data order and schedule, in its own process; with --tfmot_python) -- with 8-bit per-channel
weights, with per_channel=False and with 4-bit weights. Each .tflite is scored on the test set
and against its own QAT model (top-1 agreement, mean / max output LSB difference), on LiteRT's
builtin kernels and on XNNPACK (the default interpreter's delegate); `tfqat.evaluate_int8` is
scored against the .tflite it simulates. TFMOT has no QAT for vit_tiny's layers.

Presets: --quick (ResNet-8 and vit_tiny on 1,000 images, a few minutes; the slow tests run it),
--medium (ResNet-8 and MobileNetV2, 3,000 training images), default `full` (all three models,
the whole test split, a class-balanced training subset and epochs per model sized to about 90
minutes on 2 cores; ResNet-8 over 3 seeds). The report and plots are written
atomically (default bench/results/real/REAL.md); --update_benchmarks also puts the report into
the "Real data (CIFAR-10, JPEG copy)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # the figures are CPU figures
os.environ.pop("TF_USE_LEGACY_KERAS", None)
BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402

BATCH = 32
FLOAT_LR, QAT_LR = 2e-3, 1e-4
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
ROW_ORDER = ("converter PTQ", "tfqat PTQ", "tfqat QAT", "TFMOT QAT")
SECTION_START = "<!-- bench/real.py: start -->"
SECTION_END = "<!-- bench/real.py: end -->"
# Weight settings: (label, QuantConfig kwargs, whether the converter can do it).
VARIANTS = (
    ("8-bit per-channel", {}, True),
    ("8-bit per-tensor", {"per_channel": False}, True),
    ("4-bit weights", {"weight_bits": 4}, False),
)


@dataclasses.dataclass
class Config:
    """What one run trains and measures (a model spec's "schedule" overrides these fields)."""

    name: str
    models: list  # dicts: key, name, alpha, optional schedule (Config fields for that model)
    seeds: list
    train: int | None  # training images (class-balanced subset; None: all 50,000)
    validation: int  # held out of the training split, to pick the calibration method
    test: int | None  # test images (None: all 10,000)
    float_epochs: int
    qat_epochs: int
    calibration_images: int = 512
    variants: tuple = tuple(v[0] for v in VARIANTS)


RESNET8 = {"key": "resnet8", "name": "resnet8", "alpha": 1.0}
MOBILENET = {"key": "mobilenet_v2 (alpha 0.35)", "name": "mobilenet_v2", "alpha": 0.35}
VIT = {"key": "vit_tiny", "name": "vit_tiny", "alpha": 1.0}
TFMOT_CANNOT = {"vit_tiny": "TFMOT has no QAT for MultiHeadAttention, LayerNormalization or the "
                            "position embedding (it refuses them: bench/layer_coverage.py)"}
PRESETS = {
    # Sized for about 90 minutes on 2 idle cores (measured: ResNet-8 trains 585 float / 253 QAT
    # images/s, MobileNetV2 191 / 48, vit_tiny 422 / 158; conversions take seconds).
    "full": Config("full", [
        {**RESNET8, "schedule": {"seeds": [0, 1, 2]}},
        {**MOBILENET, "schedule": {"train": 10000, "float_epochs": 6}},
        {**VIT, "schedule": {"train": 10000}},
    ], seeds=[0], train=20000, validation=1000, test=None, float_epochs=10, qat_epochs=1),
    # Sized for ~25 minutes on 2 cores shared with other jobs (each int8 conversion alone
    # takes about a minute there).
    "medium": Config("medium", [RESNET8, MOBILENET], seeds=[0], train=3000, validation=500,
                     test=1000, float_epochs=4, qat_epochs=1, calibration_images=256),
    "quick": Config("quick", [RESNET8, VIT], seeds=[0], train=1000, validation=200, test=300,
                    float_epochs=2, qat_epochs=1, calibration_images=128),
}


# ---- data -----------------------------------------------------------------------------

def load_cifar10(path):
    """(x_train, y_train, x_test, y_test) from decoded arrays or the JPEG copy (cached decode)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SystemExit(f"bench/real.py: --data={path}: no such file. Pass CIFAR-10 as an .npz "
                         "(see --help).")
    with np.load(path) as arrays:
        keys = set(arrays.files)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        decoded = path
    elif {"train_jpeg", "train_offsets", "y_train"} <= keys:
        script = path.parent / "cifar10.py"
        if not script.is_file():
            raise SystemExit(f"bench/real.py: --data={path} holds JPEG bytes but {script} (the "
                             "decoder beside it) is missing.")
        stat = path.stat()
        decoded = pathlib.Path(tempfile.gettempdir()) / "tfqat-bench" / \
            f"cifar10-{stat.st_size}-{int(stat.st_mtime)}.npz"
        if not decoded.is_file():
            decoded.parent.mkdir(parents=True, exist_ok=True)
            partial = decoded.with_suffix(f".{os.getpid()}.npz")
            print(f"[real] decoding {path} -> {decoded} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(script), str(partial)], check=True)
            os.replace(partial, decoded)
    else:
        raise SystemExit(f"bench/real.py: --data={path} has arrays {sorted(keys)}; it needs "
                         "x_train, y_train, x_test, y_test (or the JPEG copy's train_jpeg, ...).")
    with np.load(decoded) as arrays:
        return tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def _balanced(y, n, rng):
    if n is None or n >= len(y):
        return rng.permutation(len(y))
    picks = [rng.permutation(np.flatnonzero(y == c))[:n // 10] for c in range(10)]
    return rng.permutation(np.concatenate(picks))


def split(arrays, config, seed):
    """Float32 [0, 1] images: train, validation (from the training split) and test."""
    x_train, y_train, x_test, y_test = arrays
    rng = np.random.default_rng([seed, 11])
    wanted = None if config.train is None else config.train + config.validation
    keep = _balanced(y_train, wanted, rng)
    val, train = keep[:config.validation], keep[config.validation:]
    test = np.sort(_balanced(y_test, config.test, rng))
    scale = lambda x: (x.astype(np.float32) / 255.0)  # noqa: E731
    return {"x_train": scale(x_train[train]), "y_train": y_train[train].astype(np.int64),
            "x_val": scale(x_train[val]), "y_val": y_train[val].astype(np.int64),
            "x_test": scale(x_test[test]), "y_test": y_test[test].astype(np.int64)}


# ---- measurements ---------------------------------------------------------------------

def _accuracy(probabilities, labels):
    return float(np.mean(np.asarray(probabilities).argmax(-1) == labels))


def fidelity_summary(scores):
    """The summary of one fidelity measurement: disagreements become counts, with those where
    the QAT model's own top-2 margin is under one output LSB (the int8 output cannot hold that
    ranking) counted apart."""
    flips = scores.pop("disagreements")
    scores.pop("qat")
    scores["disagreements"] = len(flips)
    scores["disagreements_within_1_lsb"] = sum(f["qat_margin_lsb"] < 1 for f in flips)
    return scores


def _score(tflite, reference, data):
    """int8 test accuracy and fidelity to `reference` (the QAT model's test outputs), on the
    builtin kernels (top level) and on XNNPACK ("xnnpack")."""
    import run as bench_run

    scores, on_xnnpack = (fidelity_summary(bench_run.tflite_fidelity(
        reference, tflite, data["x_test"], data["y_test"], kernels=kernels))
        for kernels in ("builtin", "xnnpack"))
    return {**scores, "xnnpack": on_xnnpack, "bytes": len(tflite)}


def int8_eval_vs_tflite(tflite, x, kernels):
    """How often `tfqat.evaluate_int8(kernels=...)` computes what the .tflite computes on those
    kernels (top-1 agreement, identical int8 outputs, max difference), and the .tflite's
    outputs (run_tflite's)."""
    import tfqat
    from tfqat.diagnostics import evaluation

    ours = tfqat.evaluate_int8(tflite, x, kernels=kernels).outputs.raw
    lite = evaluation.run_tflite(tflite, x, kernels=kernels)
    return {"top1": float(np.mean(ours.argmax(-1) == lite.raw.argmax(-1))),
            "identical_outputs": float(np.mean(np.all(ours == lite.raw, axis=-1))),
            "max_lsb": int(np.abs(ours.astype(np.int32) - lite.raw).max())}, lite


def _int8_eval_agreement(tflite, reference, data):
    """`int8_eval_vs_tflite` for each kernel set evaluate_int8 simulates, and the fidelity of
    the .tflite to `reference` (its QAT model's outputs) on the reference kernels."""
    import run as bench_run

    scores, outputs = {}, {}
    for kernels in ("reference", "xnnpack"):
        scores[kernels], outputs[kernels] = int8_eval_vs_tflite(tflite, data["x_test"], kernels)
    reference_fidelity = bench_run.outputs_fidelity(reference, outputs["reference"],
                                                    data["y_test"])
    return scores, fidelity_summary(reference_fidelity)


def _export(qat):
    import tfqat

    with contextlib.redirect_stdout(io.StringIO()):
        return tfqat.export_tflite(qat)


def train_float(spec, data, config, seed):
    """The float model, trained with Adam + cosine decay; BN re-estimated when unsettled."""
    import keras

    import tfqat
    from tfqat.calibration import batchnorm
    from tfqat.training import models

    keras.utils.set_random_seed(seed)
    model = models.build_model(spec["name"], (32, 32, 3), 10, spec["alpha"])
    steps = config.float_epochs * common.steps_per_epoch(len(data["y_train"]), BATCH)
    common.compile_cosine(keras, model, FLOAT_LR, steps)
    train_s, curve = 0.0, []
    for order in common.epoch_orders(len(data["y_train"]), config.float_epochs, seed):
        start = time.perf_counter()
        common.fit_in_order(model, data["x_train"], data["y_train"], [order], BATCH)
        train_s += time.perf_counter() - start
        curve.append(_accuracy(model.predict(data["x_test"], batch_size=256, verbose=0),
                               data["y_test"]))  # test accuracy after each epoch: the curve
    before = curve[-1]
    momentum = batchnorm.max_momentum(model)  # None: no BatchNormalization (vit_tiny)
    weight = 0.0 if momentum is None else batchnorm.unsettled_weight(momentum, steps)
    reestimated = weight > 0.01  # the tfqat-train "auto" rule
    if reestimated:
        tfqat.reestimate_batchnorm(model, data["x_train"], steps=200, batch_size=BATCH)
    after = _accuracy(model.predict(data["x_test"], batch_size=256, verbose=0), data["y_test"])
    return model, {"accuracy": after, "accuracy_before_bn_reestimation": before,
                   "bn_reestimated": reestimated, "initial_stats_weight": weight,
                   "train_s": train_s, "steps": steps, "test_accuracy_per_epoch": curve}


def tfqat_ptq(float_model, variant_kwargs, data, config):
    """tfqat PTQ: the calibration method with the best validation accuracy, exported."""
    import tfqat

    calibration = data["x_train"][:config.calibration_images]
    tried = {}
    best = None
    for method in CALIBRATION_METHODS:
        qat = tfqat.quantize_model(float_model, tfqat.QuantConfig(**variant_kwargs))
        with contextlib.redirect_stderr(io.StringIO()):
            tfqat.calibrate(qat, calibration, method=method)
        tried[method] = _accuracy(qat.predict(data["x_val"], batch_size=256, verbose=0),
                                  data["y_val"])
        if best is None or tried[method] > tried[best[0]]:
            best = (method, qat)
    method, qat = best
    tflite = _export(qat)
    reference = qat.predict(data["x_test"], batch_size=256, verbose=0)
    return {"method": method, "validation_accuracy": tried, **_score(tflite, reference, data)}, method


def tfqat_qat(float_model, variant_kwargs, method, data, config, seed):
    """tfqat QAT from the float weights: ranges calibrated first, BN frozen halfway."""
    import keras

    import tfqat

    steps = config.qat_epochs * common.steps_per_epoch(len(data["y_train"]), BATCH)
    qat = tfqat.quantize_model(float_model, tfqat.QuantConfig(bn_freeze_delay=steps // 2,
                                                              **variant_kwargs))
    with contextlib.redirect_stderr(io.StringIO()):
        tfqat.calibrate(qat, data["x_train"][:config.calibration_images], method=method)
    common.compile_cosine(keras, qat, QAT_LR, steps)
    start = time.perf_counter()
    common.fit_in_order(qat, data["x_train"], data["y_train"],
                        common.epoch_orders(len(data["y_train"]), config.qat_epochs, seed + 1000),
                        BATCH)
    train_s = time.perf_counter() - start
    tflite = _export(qat)
    reference = qat.predict(data["x_test"], batch_size=256, verbose=0)
    return {"train_s": train_s, "steps": steps, "bn_freeze_delay": steps // 2,
            **_score(tflite, reference, data)}, tflite, reference


def tfmot_qat(tfmot, float_model, spec, data, config, seed, workdir):
    """TFMOT QAT (8-bit, its default) through bench/tfmot_worker.py, same weights and order."""
    key = f"{spec['key']}-seed{seed}"
    npz = workdir / f"real_{seed}_{spec['name']}.npz"
    orders = common.epoch_orders(len(data["y_train"]), config.qat_epochs, seed + 1000)
    np.savez(npz, x_train=data["x_train"], y_train=data["y_train"], x_test=data["x_test"],
             y_test=data["y_test"], qat_orders=orders, **common.layer_weights(float_model))
    run_job = {"key": key, "seed": seed, "npz": str(npz),
               "spec": {"name": spec["name"], "input_shape": [32, 32, 3], "num_classes": 10,
                        "alpha": spec["alpha"]},
               "tflite": str(workdir / f"{key}.tflite"),
               "predictions": str(workdir / f"{key}.npz")}
    done = tfmot.run({"task": "accuracy", "runs": [run_job], "learning_rate": QAT_LR,
                      "batch_size": BATCH})
    if done is None:
        return None
    reference = np.load(run_job["predictions"])["qat"]
    tflite = pathlib.Path(run_job["tflite"]).read_bytes()
    return {"train_s": done["runs"][0]["qat_train_s"], **_score(tflite, reference, data)}


def run_benchmark(config, arrays, tfmot, workdir, partial_path=None):
    """Every model x seed x row; returns the JSON-able results (also written to
    `partial_path` after each model and seed, so a killed run keeps what it measured)."""
    import keras

    started = time.perf_counter()
    runs = []
    for spec in config.models:
        model_config = schedule(config, spec)
        for seed in model_config.seeds:
            data = split(arrays, model_config, seed)
            print(f"[real] {spec['key']} seed {seed}: float training ...", file=sys.stderr,
                  flush=True)
            float_model, float_result = train_float(spec, data, model_config, seed)
            entry = {"model": spec["key"], "seed": seed, "float": float_result, "rows": {},
                     "schedule": {k: getattr(model_config, k) for k in
                                  ("train", "float_epochs", "qat_epochs")}}
            calibration = data["x_train"][:model_config.calibration_images]
            for label, kwargs, converter_can in VARIANTS:
                if label not in config.variants:
                    continue
                print(f"[real] {spec['key']} seed {seed}: {label} ...", file=sys.stderr, flush=True)
                rows = {}
                if converter_can:
                    from tfqat.diagnostics import evaluation

                    tflite = evaluation.converter_ptq(
                        float_model, calibration, num_samples=len(calibration),
                        per_channel=kwargs.get("per_channel", True))
                    reference = float_model.predict(data["x_test"], batch_size=256, verbose=0)
                    rows["converter PTQ"] = _score(tflite, reference, data)
                rows["tfqat PTQ"], method = tfqat_ptq(float_model, kwargs, data, model_config)
                rows["tfqat QAT"], qat_tflite, qat_outputs = tfqat_qat(
                    float_model, kwargs, method, data, model_config, seed)
                if label == "8-bit per-channel":
                    entry["int8_eval"], rows["tfqat QAT"]["reference"] = _int8_eval_agreement(
                        qat_tflite, qat_outputs, data)
                    if tfmot.available and spec["name"] not in TFMOT_CANNOT:
                        rows["TFMOT QAT"] = tfmot_qat(tfmot, float_model, spec, data,
                                                      model_config, seed, workdir)
                entry["rows"][label] = rows
            runs.append(entry)
            if partial_path is not None:
                common.atomic_write(partial_path, json.dumps({"runs": runs}, indent=1))
            keras.backend.clear_session()
    return {"runs": runs, "total_s": time.perf_counter() - started}


def schedule(config, spec):
    """`config` with the model's own schedule overrides (train, epochs, seeds) applied."""
    return dataclasses.replace(config, **spec.get("schedule", {}))


# ---- report ---------------------------------------------------------------------------

def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values)), len(values)


def _pct(stats):
    if stats is None:
        return "not measured"
    mean, std, count = stats
    return f"{100 * mean:.2f} %" if count == 1 else f"{100 * mean:.2f} ± {100 * std:.2f} %"


METRICS = ("int8", "agreement", "mean_lsb", "max_lsb", "disagreements",
           "disagreements_within_1_lsb")
# Where each kernel set's scores sit in a row's results, and its metrics' prefix in `collect`.
KERNEL_SETS = (("builtin kernels", None, ""), ("XNNPACK", "xnnpack", "xnnpack_"),
               ("reference kernels", "reference", "reference_"))


def collect(results):
    """{model: {variant: {row: {metric: (mean, std, n)}}}} and {model: float stats}; metrics
    on XNNPACK and the reference kernels carry KERNEL_SETS' prefixes."""
    table, floats, int8_eval = {}, {}, {}
    for entry in results["runs"]:
        floats.setdefault(entry["model"], []).append(entry)
        for kernels, scores in entry.get("int8_eval", {}).items():
            slot = int8_eval.setdefault(entry["model"], {}).setdefault(kernels, {})
            for metric, value in scores.items():
                slot.setdefault(metric, []).append(value)
        for variant, rows in entry["rows"].items():
            for row, scores in rows.items():
                slot = table.setdefault(entry["model"], {}).setdefault(variant, {}).setdefault(
                    row, {})
                scores = scores or {}  # None: a row that was not measured
                for _, key, prefix in KERNEL_SETS:
                    kernel_scores = scores.get(key, {}) if key else scores
                    for metric in METRICS:
                        slot.setdefault(prefix + metric, []).append(kernel_scores.get(metric))
    stats = {m: {v: {r: {k: _mean_std(vals) for k, vals in metrics.items()}
                     for r, metrics in rows.items()} for v, rows in variants.items()}
             for m, variants in table.items()}
    float_stats = {}
    for model, entries in floats.items():
        fs = [e["float"] for e in entries]
        curves = [f["test_accuracy_per_epoch"] for f in fs if f.get("test_accuracy_per_epoch")]
        float_stats[model] = {
            "accuracy": _mean_std([f["accuracy"] for f in fs]),
            "before": _mean_std([f["accuracy_before_bn_reestimation"] for f in fs]),
            "reestimated": any(f["bn_reestimated"] for f in fs),
            "curve": np.mean([c for c in curves if len(c) == len(curves[0])], axis=0).tolist()
            if curves else [],
            "schedule": entries[0].get("schedule"), "seeds": [e["seed"] for e in entries],
            "int8_eval": {k: {metric: _mean_std(values) for metric, values in scores.items()}
                          for k, scores in int8_eval.get(model, {}).items()}}
    return stats, float_stats


def _fidelity_target(label, model, fid, prefix=""):
    agreement, mean_lsb = fid.get(f"{prefix}agreement"), fid.get(f"{prefix}mean_lsb")
    if not agreement:
        return None
    met = agreement[0] >= 0.995 and mean_lsb[0] <= 0.5
    flips, near = fid.get(f"{prefix}disagreements"), fid.get(f"{prefix}disagreements_within_1_lsb")
    ties = (f" ({near[0]:.0f} of the {flips[0]:.0f} disagreeing images: QAT top-2 margin under "
            "1 output LSB)" if flips and near and flips[0] else "")
    return (f"{label}: agreement ≥ 99.5 %, mean ≤ 0.5 LSB", model,
            f"{100 * agreement[0]:.2f} % / {mean_lsb[0]:.3f} LSB{ties}",
            "met" if met else "**missed**")


def targets(stats, float_stats):
    """[(target, model, measured, verdict)] for the issue's targets."""
    rows = []
    for model, variants in stats.items():
        main = variants.get("8-bit per-channel", {})
        qat = main.get("tfqat QAT", {}).get("int8")
        flt = float_stats[model]["accuracy"]
        if qat and flt:
            met = qat[0] >= flt[0] - 0.003
            rows.append(("tfqat QAT int8 ≥ float − 0.3 points", model,
                         f"{_pct(qat)} vs float {_pct(flt)}", "met" if met else "**missed**"))
        tfmot = main.get("TFMOT QAT", {}).get("int8")
        cannot = next((why for name, why in TFMOT_CANNOT.items() if model.startswith(name)), None)
        rows.append(("tfqat QAT int8 ≥ TFMOT QAT int8", model,
                     f"{_pct(qat)} vs {_pct(tfmot)}",
                     f"not measured: {cannot}" if cannot and tfmot is None else
                     "not measured (see the TFMOT note)" if tfmot is None or qat is None else
                     ("met" if qat[0] >= tfmot[0] else "**missed**")))
        if model == "resnet8":
            rows.append(("ResNet-8 int8 ≥ 85 % top-1 (MLPerf Tiny)", model, _pct(qat),
                         "met" if qat and qat[0] >= 0.85 else "**missed**"))
        for variant in ("8-bit per-tensor", "4-bit weights"):
            rows_v = variants.get(variant, {})
            q, p = rows_v.get("tfqat QAT", {}).get("int8"), rows_v.get("tfqat PTQ", {}).get("int8")
            if q and p:
                margin = 100 * (q[0] - p[0])
                rows.append((f"QAT beats PTQ by a clear margin ({variant})", model,
                             f"QAT {_pct(q)} vs tfqat PTQ {_pct(p)} ({margin:+.2f} points)",
                             "met" if margin >= 1.0 else "**missed**"))
        for row in ("tfqat PTQ", "tfqat QAT"):
            for kernels, _, prefix in KERNEL_SETS:
                target = _fidelity_target(f"{row} .tflite vs its model ({kernels})", model,
                                          main.get(row, {}), prefix)
                if target:
                    rows.append(target)
        for kernels, scores in float_stats[model]["int8_eval"].items():
            top1, same = scores["top1"][0], scores["identical_outputs"][0]
            rows.append((f"evaluate_int8 vs the .tflite ({kernels}): top-1 agreement ≥ 99.9 %",
                         model, f"{100 * top1:.2f} % (identical int8 outputs on "
                         f"{100 * same:.2f} % of images, max {scores['max_lsb'][0]:.0f} LSB)",
                         "met" if top1 >= 0.999 else "**missed**"))
    return rows


def _save_png(fig, path):
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    common.atomic_write(path, buffer.getvalue())


def plot(stats, float_stats, path, curve_path):
    """Grouped bars of int8 test accuracy per row (one panel per model) at `path`, the float
    models' test accuracy per epoch at `curve_path`. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(stats)
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4), squeeze=False)
    row_names = ROW_ORDER
    for ax, model in zip(axes[0], models):
        variants = list(stats[model])
        width = 0.8 / len(row_names)
        for index, row in enumerate(row_names):
            values = [100 * ((stats[model][v].get(row, {}).get("int8") or (np.nan,))[0])
                      for v in variants]
            positions = np.arange(len(variants)) + (index - 1.5) * width
            ax.bar(positions, values, width, label=row)
        ax.axhline(100 * float_stats[model]["accuracy"][0], color="k", linestyle="--",
                   linewidth=1, label="float")
        ax.set_xticks(np.arange(len(variants)))
        ax.set_xticklabels(variants)
        ax.set_ylabel("int8 .tflite test accuracy (%)")
        ax.set_title(model)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save_png(fig, path)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, fs in float_stats.items():
        if fs["curve"]:
            ax.plot(np.arange(1, len(fs["curve"]) + 1), 100 * np.asarray(fs["curve"]),
                    marker="o", label=model)
    ax.axhline(85, color="k", linestyle="--", linewidth=1, label="MLPerf Tiny target (85 %)")
    ax.set_xlabel("float training epoch")
    ax.set_ylabel("float test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, curve_path)
    return True


def _schedules(float_stats, config):
    parts = []
    for model, fs in float_stats.items():
        schedule = fs["schedule"] or {k: config[k] for k in ("train", "float_epochs", "qat_epochs")}
        parts.append(f"{model}: {schedule['train'] or 50000} training images, "
                     f"{schedule['float_epochs']} float epochs, {schedule['qat_epochs']} QAT "
                     f"epoch(s), seeds {fs['seeds']}")
    return "; ".join(parts)


def render(results, plot_path):
    """The Markdown section."""
    config = results["config"]
    stats, float_stats = collect(results)
    out = ["## Real data (CIFAR-10, JPEG copy)", "",
           f"Written by `python bench/real.py --data=…{'' if config['name'] == 'full' else ' --' + config['name']}` (preset "
           f"`{config['name']}`, {results['total_s'] / 60:.1f} min wall"
           f"{', the sum of %d runs of one model each' % results['processes'] if results.get('processes', 1) > 1 else ''}, on "
           f"{results['machine']['cores']} cores shared with other jobs). "
           f"Training images: class-balanced subsets of the official training split (another "
           f"{config['validation']} from it are held out for choosing the calibration method); "
           f"test images: {config['test'] or 10000} of the official test split. "
           f"Per model: {_schedules(float_stats, config)}. "
           f"Float: Adam {FLOAT_LR} with cosine decay, batch "
           f"{BATCH}, no augmentation. QAT (tfqat and TFMOT): from "
           f"the float weights, Adam {QAT_LR} with cosine decay, same data order; tfqat's BN "
           f"freeze halfway. PTQ calibration: "
           f"{config['calibration_images']} training images.", ""]
    if config["name"] != "full":
        out += [f"**Reduced schedule.** These figures come from the `{config['name']}` preset, "
                "a smaller training subset and fewer epochs than `python bench/real.py --data=…` "
                "(the `full` preset).", ""]
    out += ["### Targets", "", "| target | model | measured | result |", "| --- | --- | --- | --- |"]
    out += [f"| {t} | {m} | {v} | {r} |" for t, m, v, r in targets(stats, float_stats)]
    out += [""]
    for model, variants in stats.items():
        fs = float_stats[model]
        note = (f" (BatchNorm statistics re-estimated after float training: "
                f"{_pct(fs['before'])} before; the per-epoch figures below use the moving "
                "statistics as training left them)" if fs["reestimated"] else "")
        curve = ", ".join(f"{100 * a:.1f}" for a in fs["curve"])
        short = ""
        if model == "resnet8" and fs["curve"] and fs["accuracy"][0] < 0.85:
            schedule = fs["schedule"] or config
            short = (f" MLPerf Tiny's 85 % comes from a much longer schedule (its reference "
                     f"trains ResNet-8 for 500 epochs on all 50,000 images with augmentation); "
                     f"{schedule['float_epochs']} epochs on {schedule['train'] or 50000} images "
                     f"without augmentation (what this run's time allows; 500 epochs of "
                     f"50,000 images would take about 12 hours of float training alone on 2 "
                     f"cores) end {100 * (0.85 - fs['accuracy'][0]):.1f} points short. The "
                     "curve is in the second plot.")
        out += [f"### {model}", "", f"Float (Keras) test accuracy: {_pct(fs['accuracy'])}{note}. "
                f"Per float epoch (%): {curve}.{short}",
                "", "| weights | row | int8 .tflite accuracy | agreement with its model | "
                "mean LSB | max LSB | XNNPACK: int8 accuracy | agreement | mean LSB |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for variant, rows in variants.items():
            for row in sorted(rows, key=ROW_ORDER.index):
                metrics = rows[row]
                if metrics["int8"] is None:
                    out.append(f"| {variant} | {row} | not measured | | | | | | |")
                    continue
                xnn = metrics["xnnpack_mean_lsb"]
                out.append(f"| {variant} | {row} | {_pct(metrics['int8'])} | "
                           f"{_pct(metrics['agreement'])} | {metrics['mean_lsb'][0]:.3f} | "
                           f"{metrics['max_lsb'][0]:.0f} | {_pct(metrics['xnnpack_int8'])} | "
                           f"{_pct(metrics['xnnpack_agreement'])} | "
                           f"{'not measured' if xnn is None else f'{xnn[0]:.3f}'} |")
        out.append("")
    methods = {}  # (model, variant) -> the method picked for each seed, in run order
    for e in results["runs"]:
        for v, rows in e["rows"].items():
            methods.setdefault((e["model"], v), []).append(rows["tfqat PTQ"]["method"])
    out += ["tfqat PTQ's calibration method (best validation accuracy, per seed): " + "; ".join(
        f"{m} {v}: {', '.join(picked)}" for (m, v), picked in sorted(methods.items())) + ".", ""]
    out += ["\"agreement\" and the LSB columns compare each .tflite with its own model (the "
            "float model for converter PTQ), on LiteRT's builtin kernels (no delegate) and on "
            "XNNPACK, the delegate LiteRT's default interpreter applies. With several seeds, "
            "accuracies and agreements are mean ± std; LSB figures are means. 4-bit "
            "weights are simulated: the .tflite stores them as int8 on a 4-bit grid; the "
            "converter has no 4-bit PTQ, so that row has no converter entry. On those files "
            "XNNPACK computes what the builtin kernels compute (identical outputs, measured on "
            "a 4-bit conv), so its columns repeat the builtin ones there. "
            "`evaluate_int8` is scored on the 8-bit per-channel tfqat QAT .tflite: its "
            "reference-kernel simulation against the reference kernels (LiteRT's "
            "BuiltinRefOpResolver), its XNNPACK simulation against XNNPACK; the reference "
            "kernels also score that .tflite's fidelity.", ""]
    if results["tfmot"]["note"]:
        out += [f"TFMOT: {results['tfmot']['note']}.", ""]
    out += ["QAT/float step time and peak memory on CIFAR-10 (ResNet-8): see \"BatchNorm fold "
            "modes\" below.", ""]
    if plot_path:
        curves = plot_path.replace("real_int8_accuracy", "real_float_curves")
        out += [f"![int8 accuracy per row]({plot_path})", "",
                f"![float test accuracy per epoch]({curves})", ""]
    return "\n".join(out) + "\n"


def update_benchmarks(section, benchmarks=ROOT / "BENCHMARKS.md", markers=None):
    """Puts `section` between the bench/real.py markers of BENCHMARKS.md (appended if absent);
    `markers`: another script's (start, end) pair."""
    start, end = markers or (SECTION_START, SECTION_END)
    text = benchmarks.read_text() if benchmarks.exists() else "# Benchmarks\n"
    block = f"{start}\n{section}{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    common.atomic_write(benchmarks, text)


def write_report(results, output, update=False):
    """The report, plot and JSON next to `output`; with `update`, BENCHMARKS.md's section too."""
    output = pathlib.Path(output)
    plots_dir = output.parent / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    common.atomic_write(plots_dir / "real_results.json", json.dumps(results, indent=1))
    stats, float_stats = collect(results)
    png = plots_dir / "real_int8_accuracy.png"
    plotted = plot(stats, float_stats, png, plots_dir / "real_float_curves.png")
    common.atomic_write(output, render(results, os.path.relpath(png, output.parent)
                                       if plotted else None))
    if update:
        update_benchmarks(render(results, os.path.relpath(png, ROOT) if plotted else None))


def merge(paths):
    """One results dict from several runs' real_results.json (one process per model, run one
    after another): runs concatenated, wall times summed, TFMOT notes joined."""
    parts = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    merged = dict(parts[0])
    merged["runs"] = [run for part in parts for run in part["runs"]]
    merged["total_s"] = sum(part["total_s"] for part in parts)
    merged["processes"] = len(parts)
    notes = [part["tfmot"]["note"] for part in parts if part["tfmot"]["note"]]
    merged["tfmot"] = {**parts[0]["tfmot"], "note": "; ".join(notes)}
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CIFAR-10 .npz: decoded arrays, or "
                        "../shared/data/cifar10_jpeg.npz (required unless --merge)")
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="ResNet-8 and vit_tiny on 1,000 images (minutes)")
    preset.add_argument("--medium", action="store_true", help="both models, 3,000 images")
    parser.add_argument("--models", help="comma-separated subset of the preset's models "
                        "(resnet8, mobilenet_v2, vit_tiny)")
    parser.add_argument("--output", help="report to write (default bench/results/real/REAL.md; "
                        "with --quick bench/results/quick_real/REAL.md)")
    parser.add_argument("--tfmot_python", help="interpreter with tf-keras and "
                        "tensorflow-model-optimization ('none' skips TFMOT)")
    parser.add_argument("--update_benchmarks", action="store_true",
                        help="also write the section into BENCHMARKS.md")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only write the report from "
                        "these real_results.json files (runs of one preset, e.g. one per model)")
    args = parser.parse_args(argv)
    # A --quick run must not overwrite the committed medium/full report.
    default = BENCH / "results" / ("quick_real" if args.quick else "real") / "REAL.md"
    output = pathlib.Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        write_report(merge(args.merge), output, args.update_benchmarks)
        print(f"[real] wrote {output}", file=sys.stderr)
        return
    if not args.data:
        parser.error("--data is required (CIFAR-10 as an .npz; see --help)")
    config = PRESETS["quick" if args.quick else "medium" if args.medium else "full"]
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {m["name"] for m in config.models})
        if unknown:
            parser.error(f"--models: {', '.join(unknown)} not in preset {config.name!r} "
                         f"({', '.join(m['name'] for m in config.models)})")
        config = dataclasses.replace(config, models=[m for m in config.models
                                                     if m["name"] in wanted])
    arrays = load_cifar10(args.data)  # bad --data fails here, before any training

    import run as bench_run

    partial = output.parent / "plots" / "real_partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfqat_real_") as workdir:
        workdir = pathlib.Path(workdir)
        tfmot = bench_run.find_tfmot(args.tfmot_python, workdir)
        results = run_benchmark(config, arrays, tfmot, workdir, partial)
    results.update(config=dataclasses.asdict(config), machine=bench_run.machine_description(),
                   versions=bench_run.versions(),
                   tfmot={"available": tfmot.available, "note": tfmot.note,
                          "versions": tfmot.versions})
    write_report(results, output, args.update_benchmarks)
    print(f"[real] wrote {output} in {results['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
