"""The two BatchNorm fold modes side by side: QAT step time and int8 accuracy (ResNet-8).

  python bench/bn_fold.py --data=PATH [--quick] [--tfmot_python=PY] [--update_benchmarks]
  python bench/bn_fold.py --data=PATH --memory_only [--update_benchmarks]  (memory rows only)

`QuantConfig(bn_fold="exact")` (the default) takes the batch statistics before the freeze
from a second, unquantized convolution; `bn_fold="approximate"` takes them from the
quantized folded convolution's output rescaled by sigma_mv / gamma, one convolution per
step (docs/design.md, "BatchNorm fold modes").

Step time: ResNet-8 at batch 32 on one fixed CIFAR-10 batch, float and the QAT models
(exact and approximate before the freeze, and after it) timed interleaved, one step of
each per round; the figure is the median of per-round ratios to float. TFMOT's ratio is
measured in its own process (bench/tfmot_worker.py, as B1 does) when --tfmot_python (or
$TFQAT_TFMOT_PYTHON) gives an interpreter with it.
Accuracy: one float ResNet-8 trained on a CIFAR-10 subset, then QAT in each mode from
the same weights, same data order and schedule (BN freeze halfway), int8 .tflite test
accuracy and agreement with its own QAT model. --data as in bench/real.py.
Peak memory: each model alone in a fresh process, a few training steps on the same batch;
the peak resident size above the size before the steps (Linux's VmHWM, reset after the
first step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # CPU figures
os.environ.pop("TF_USE_LEGACY_KERAS", None)
BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402
import real  # noqa: E402

MODES = ("exact", "approximate")
SECTION_START = "<!-- bench/bn_fold.py: start -->"
SECTION_END = "<!-- bench/bn_fold.py: end -->"
PRESETS = {
    # About 20 minutes on 2 shared cores.
    "default": dict(data=real.Config("bn_fold", [real.RESNET8], seeds=[0], train=3000,
                                     validation=200, test=1000, float_epochs=4, qat_epochs=2,
                                     calibration_images=256), warmup=5, rounds=40,
                    memory_steps=20),
    "quick": dict(data=real.Config("bn_fold quick", [real.RESNET8], seeds=[0], train=500,
                                   validation=100, test=200, float_epochs=1, qat_epochs=1,
                                   calibration_images=64), warmup=2, rounds=6,
                  memory_steps=3),
}


def step_ratios(x, y, warmup, rounds):
    """{label: ratio stats to float} for ResNet-8 at batch len(x), steps interleaved."""
    steps = {label: common.train_step_fn(model, x, y)
             for label, model in _variants(x.shape[1:]).items()}
    times = common.interleaved_times(steps, warmup, rounds)
    return {label: common.ratio_stats(times[label], times["float"])
            for label in times if label != "float"}


def _variants(input_shape):
    """{label: compiled model}: float ResNet-8 and its QAT models in each fold mode."""
    import keras

    import tfqat
    from tfqat.training import models

    keras.utils.set_random_seed(0)
    float_model = models.build_model("resnet8", input_shape, 10, 1.0)
    variants = {"float": float_model}
    for mode in MODES:
        variants[f"{mode} before freeze"] = tfqat.quantize_model(
            float_model, tfqat.QuantConfig(bn_freeze_delay=10**9, bn_fold=mode))
    variants["after freeze"] = tfqat.quantize_model(float_model, tfqat.QuantConfig(bn_freeze_delay=0))
    for model in variants.values():
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      jit_compile=False)
    return variants


def _status_kb(field):
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def memory_child(label, batch_npz, steps):
    """Peak resident memory of a fit of one variant (`steps` steps), in this process.

    The peak (VmHWM) is reset once the model is built and compiled, so `fit_mb` is what
    the fit adds: the traced training step (graph, kernels' buffers) and the
    activations, gradients and optimizer slots of its steps (Linux only).
    """
    batch = np.load(batch_npz)
    model = _variants(batch["x"].shape[1:])[label]
    step = common.train_step_fn(model, batch["x"], batch["y"])
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    resident = _status_kb("VmRSS:")
    for _ in range(steps):
        step()
    peak = _status_kb("VmHWM:")
    return {"resident_mb": resident / 1024, "peak_mb": peak / 1024,
            "fit_mb": (peak - resident) / 1024}


def peak_memory(x, y, steps):
    """{label: memory_child figures}, each variant alone in a fresh process (its own peak)."""
    import subprocess
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "batch.npz"
        np.savez(path, x=x, y=y)
        for label in ("float", *(f"{mode} before freeze" for mode in MODES), "after freeze"):
            done = subprocess.run(
                [sys.executable, __file__, "--memory_child", label, "--batch_npz", str(path),
                 "--steps", str(steps)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory measurement of {label!r} failed:\n"
                                   f"{done.stderr[-3000:]}")
            out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def tfmot_step_ratio(tfmot, x, y, warmup, rounds, workdir):
    """TFMOT's QAT/float step ratio on the same batch, or None."""
    if not tfmot.available:
        return None
    path = pathlib.Path(workdir) / "bn_fold_batch.npz"
    np.savez(path, x=x, y=y)
    spec = {"key": "resnet8", "name": "resnet8", "input_shape": list(x.shape[1:]),
            "num_classes": 10, "alpha": 1.0, "batch_npz": str(path)}
    done = tfmot.run({"task": "step_time", "seed": 0, "models": [spec], "warmup": warmup,
                      "rounds": rounds})
    if done is None:
        return None
    times = done["models"]["resnet8"]["times"]
    return common.ratio_stats(times["tfmot"], times["float"])


def accuracies(data, config):
    """{"float": accuracy, mode: {int8 accuracy, agreement, ...}} from one float model."""
    float_model, float_info = real.train_float(real.RESNET8, data, config, seed=0)
    out = {"float": float_info["accuracy"]}
    for mode in MODES:
        out[mode], _, _ = real.tfqat_qat(float_model, {"bn_fold": mode}, "minmax", data, config,
                                         seed=0)
    return out


def render(results):
    steps, acc = results["step_ratios"], results["accuracy"]
    config, machine = results["config"], results["machine"]
    tfmot = results.get("tfmot_step_ratio")
    fmt = lambda s: f"{s['median']:.2f} (IQR {s['q1']:.2f}–{s['q3']:.2f})"  # noqa: E731
    target = "≤ TFMOT's " + (f"{tfmot['median']:.2f}" if tfmot else "(TFMOT not measured)")
    lines = [
        "## BatchNorm fold modes (bench/bn_fold.py)", "",
        f"ResNet-8, CIFAR-10 (JPEG copy): {config['train']} training images, {config['test']} "
        f"test images, float {config['float_epochs']} epochs, QAT {config['qat_epochs']} epochs "
        "from the same float weights in each mode, BN frozen halfway, batch 32. Step times "
        f"interleaved on one batch of 32, {results['rounds']} rounds; {machine['cpu']}, "
        f"{machine['cores']} cores, load average {machine['load_average_start'][0]:.1f} at the "
        "start (other jobs ran beside it). "
        f"Run took {results['total_s'] / 60:.0f} min.", "",
        "| | QAT/float step time before the freeze (target " + target + ") | int8 test "
        "accuracy (float " + f"{100 * acc['float']:.1f} %" + ") | top-1 agreement with its "
        "QAT model | mean / max diff (LSB) |",
        "| --- | --- | --- | --- | --- |"]
    for mode in MODES:
        a = acc[mode]
        met = tfmot is not None and steps[f"{mode} before freeze"]["median"] <= tfmot["median"]
        verdict = "" if tfmot is None else (" ✅" if met else " ❌")
        lines.append(f"| bn_fold=\"{mode}\" | {fmt(steps[f'{mode} before freeze'])}{verdict} | "
                     f"{100 * a['int8']:.1f} % | {100 * a['agreement']:.1f} % | "
                     f"{a['mean_lsb']:.2f} / {a['max_lsb']:.0f} |")
    lines.append(f"| after the freeze (both modes) | {fmt(steps['after freeze'])} | | | |")
    if tfmot:
        lines.append(f"| TFMOT QAT (no fold) | {fmt(tfmot)} | | | |")
    lines += ["", "The approximate fold runs one convolution per folded layer and step instead "
              "of two; its gradients are not those of Keras's Conv -> BatchNormalization (the "
              "statistics come from the fake-quantized weights), which is what the accuracy "
              "column weighs.", ""]
    if results.get("peak_memory"):
        lines += _memory_table(results)
    return "\n".join(lines) + "\n"


def _memory_table(results):
    memory = results["peak_memory"]
    base = memory["float"]["fit_mb"]
    lines = ["Peak memory of a fit, batch 32: each model built alone in a fresh process (all "
             "four variants are built there, one is trained), then "
             f"{results['memory_steps']} training steps; \"memory the fit adds\" is the peak "
             "resident size (VmHWM, reset after building and compiling) above the resident "
             "size before the first step: the traced training step with its kernels' buffers, "
             "and the activations, gradients and optimizer slots of the steps.", "",
             "| | resident before the fit (MB) | peak (MB) | memory the fit adds (MB) | "
             "over float |", "| --- | --- | --- | --- | --- |"]
    for label, figures in memory.items():
        ratio = "1.00" if label == "float" else f"{figures['fit_mb'] / base:.2f}" if base > 0 \
            else "n/a"
        lines.append(f"| {label} | {figures['resident_mb']:.0f} | {figures['peak_mb']:.0f} | "
                     f"{figures['fit_mb']:.1f} | {ratio} |")
    return lines + ["", "Measured with the peak reset after the first step instead (a quick "
                    "run), the later steps added 1-3 MB in every variant: what a fit adds "
                    "appears in its first, tracing step (the traced graph and the buffers its "
                    "kernels allocate), larger for QAT's fake quants, corrections and freeze "
                    "switch, and about the same in both fold modes. TFMOT's fit memory is not "
                    "measured here.", ""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CIFAR-10 .npz (as bench/real.py; required)")
    parser.add_argument("--quick", action="store_true", help="a few minutes (the slow tests)")
    parser.add_argument("--output", help="JSON results (default bench/results/bn_fold.json)")
    parser.add_argument("--tfmot_python", help="interpreter with TFMOT ('none' skips it)")
    parser.add_argument("--update_benchmarks", action="store_true",
                        help="write the section into BENCHMARKS.md")
    parser.add_argument("--memory_only", action="store_true",
                        help="measure peak memory only, into the existing --output results")
    parser.add_argument("--memory_child", help=argparse.SUPPRESS)  # one variant, this process
    parser.add_argument("--batch_npz", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batch_npz, args.steps)))
        return
    if not args.data:
        parser.error("--data is required")
    preset = PRESETS["quick" if args.quick else "default"]
    arrays = real.load_cifar10(args.data)  # bad --data fails before any training
    import run as bench_run

    start = time.perf_counter()
    data = real.split(arrays, preset["data"], seed=0)
    batch = data["x_train"][:32], data["y_train"][:32]
    workdir = pathlib.Path(args.output or BENCH / "results" / "bn_fold.json").parent
    workdir.mkdir(parents=True, exist_ok=True)
    output = pathlib.Path(args.output) if args.output else BENCH / "results" / "bn_fold.json"
    if args.memory_only:  # adds the memory figures to an earlier run's results
        results = json.loads(output.read_text())
        results["memory_steps"] = preset["memory_steps"]
        results["peak_memory"] = peak_memory(*batch, preset["memory_steps"])
        common.atomic_write(output, json.dumps(results, indent=1))
        print(render(results))
        if args.update_benchmarks:
            real.update_benchmarks(render(results), markers=(SECTION_START, SECTION_END))
        return
    tfmot = bench_run.find_tfmot(args.tfmot_python, workdir)
    results = {
        "config": dataclasses.asdict(preset["data"]), "rounds": preset["rounds"],
        "machine": bench_run.machine_description(),
        "step_ratios": step_ratios(*batch, preset["warmup"], preset["rounds"]),
        "tfmot_step_ratio": tfmot_step_ratio(tfmot, *batch, preset["warmup"], preset["rounds"],
                                             workdir),
        "accuracy": accuracies(data, preset["data"]),
        "memory_steps": preset["memory_steps"],
        "peak_memory": peak_memory(*batch, preset["memory_steps"]),
    }
    results["total_s"] = time.perf_counter() - start
    common.atomic_write(output, json.dumps(results, indent=1))
    print(render(results))
    if args.update_benchmarks:
        real.update_benchmarks(render(results), markers=(SECTION_START, SECTION_END))


if __name__ == "__main__":
    main()
