"""Benchmark suite: tfqat next to float and to TFMOT, measured as ratios in one run.

  python bench/run.py            # full run, writes BENCHMARKS.md and bench/plots/*.png
  python bench/run.py --quick    # a subset in a few minutes, writes bench/results/quick/

B1 training step time QAT/float (mobilenet_v2 0.35@96, resnet8@32, batch 32, CPU);
B2 MNIST-5k accuracy float/QAT/int8 (lenet5, convnet_bn, 3 seeds);
B3 fidelity of each .tflite to its own QAT model; B4 int8 vs float .tflite size
and latency (ai-edge-litert, 1 and 2 threads, MobileNetV2 and ResNet50 at 224);
B5 wall time of quantize_model and of the int8 export.

TFMOT (the `compare` extra) runs in bench/tfmot_worker.py, in its own process
with TF_USE_LEGACY_KERAS=1; this process never imports it. Its interpreter is
--tfmot_python, else $TFQAT_TFMOT_PYTHON, else this one if tf_keras and
tensorflow_model_optimization are installed here; without one the TFMOT rows
say "not installed" and the rest runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # the figures are CPU figures
os.environ.pop("TF_USE_LEGACY_KERAS", None)  # tfqat needs Keras 3; only the worker sets it
BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402

WORKER = BENCH / "tfmot_worker.py"
BATCH = 32
FLOAT_LR, QAT_LR = 2e-3, 1e-4
MAX_ROUNDS = 400


@dataclasses.dataclass
class Config:
    """What one run measures and how long it measures it."""

    name: str
    b1_models: list  # dicts: key, name, input_shape, alpha
    b1_warmup: int
    b1_rounds: int
    profile_steps: int
    b2_models: list
    b2_seeds: list
    b2_float_epochs: int
    b2_qat_epochs: int
    b2_train_limit: int | None  # keep only this many training (and a fifth as many test) images
    b4_models: list  # dicts: key, name, input_shape, alpha, num_classes
    b4_threads: tuple
    b4_warmup: int
    b4_runs: int  # at least this many latency rounds ...
    b4_seconds: float  # ... and more, up to MAX_ROUNDS, while one measurement takes less than this
    calibration_images: int = 8


def _spec(key, name, size, channels=3, alpha=1.0, num_classes=10):
    return {"key": key, "name": name, "input_shape": [size, size, channels], "alpha": alpha,
            "num_classes": num_classes}


MOBILENET_B1 = _spec("mobilenet_v2 (alpha 0.35, 96x96)", "mobilenet_v2", 96, alpha=0.35)
RESNET8_B1 = _spec("resnet8 (32x32)", "resnet8", 32)
MOBILENET_224 = _spec("MobileNetV2 (224x224)", "mobilenet_v2", 224, num_classes=1000)
RESNET50_224 = _spec("ResNet50 (224x224)", "resnet50", 224, num_classes=1000)

PRESETS = {
    "full": Config("full", [MOBILENET_B1, RESNET8_B1], b1_warmup=5, b1_rounds=60, profile_steps=5,
                   b2_models=["lenet5", "convnet_bn"], b2_seeds=[0, 1, 2], b2_float_epochs=6,
                   b2_qat_epochs=2, b2_train_limit=None, b4_models=[MOBILENET_224, RESNET50_224],
                   b4_threads=(1, 2), b4_warmup=3, b4_runs=15, b4_seconds=20.0),
    "quick": Config("quick", [RESNET8_B1], b1_warmup=3, b1_rounds=15, profile_steps=3,
                    b2_models=["lenet5"], b2_seeds=[0], b2_float_epochs=6, b2_qat_epochs=1,
                    b2_train_limit=None, b4_models=[MOBILENET_224], b4_threads=(1, 2),
                    b4_warmup=2, b4_runs=8, b4_seconds=5.0),
    # Only for tests/test_bench.py: every code path, on models too small to mean anything.
    "tiny": Config("tiny", [_spec("resnet8 (16x16)", "resnet8", 16)], b1_warmup=1, b1_rounds=3,
                   profile_steps=1, b2_models=["lenet5"], b2_seeds=[0], b2_float_epochs=1,
                   b2_qat_epochs=1, b2_train_limit=320,
                   b4_models=[_spec("mobilenet_v2 (alpha 0.35, 32x32)", "mobilenet_v2", 32,
                                    alpha=0.35)],
                   b4_threads=(1, 2), b4_warmup=1, b4_runs=2, b4_seconds=0.0,
                   calibration_images=2),
}


# ---- TFMOT process -----------------------------------------------------------------------

class TFMOT:
    """The TFMOT worker's interpreter, or why there is none."""

    def __init__(self, python, note, workdir):
        self.python, self.note, self.workdir = python, note, pathlib.Path(workdir)
        self.versions = None
        self._jobs = 0

    @property
    def available(self) -> bool:
        """Whether TFMOT rows can be measured."""
        return self.python is not None

    def run(self, job, timeout=3600):
        """Runs one worker job; returns its result, or None (and records why) on failure."""
        if not self.available:
            return None
        self._jobs += 1
        job_path = self.workdir / f"tfmot_job{self._jobs}.json"
        result_path = self.workdir / f"tfmot_result{self._jobs}.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        try:
            done = subprocess.run([self.python, str(WORKER), str(job_path), str(result_path)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            self._fail(job["task"], str(err))
            return None
        if done.returncode != 0 or not result_path.exists():
            lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
            self._fail(job["task"], lines[-1] if lines else f"exit code {done.returncode}")
            return None
        result = json.loads(result_path.read_text())
        self.versions = result.get("versions", self.versions)
        return result

    def _fail(self, task, why):
        print(f"TFMOT worker failed on {task}: {why}", file=sys.stderr)
        self.note = (self.note + "; " if self.note else "") + f"{task} failed: {why}"


def find_tfmot(option, workdir) -> TFMOT:
    """The interpreter that runs TFMOT: --tfmot_python, $TFQAT_TFMOT_PYTHON, or this one."""
    if option == "none":
        return TFMOT(None, "not run (--tfmot_python=none)", workdir)
    python = option or os.environ.get("TFQAT_TFMOT_PYTHON")
    if not python:
        missing = [m for m in ("tf_keras", "tensorflow_model_optimization")
                   if importlib.util.find_spec(m) is None]  # find_spec does not import them
        if missing:
            return TFMOT(None, f"not installed: {', '.join(missing)} missing from {sys.executable} "
                         "(pip install 'tfqat[compare]' or pass --tfmot_python)", workdir)
        python = sys.executable
    tfmot = TFMOT(python, "", workdir)
    if tfmot.run({"task": "probe"}, timeout=600) is None:
        return TFMOT(None, f"not installed or broken in {python}: {tfmot.note}", workdir)
    return tfmot


# ---- measurements -------------------------------------------------------------------------

def _keras_and_tfqat():
    import keras

    import tfqat

    return keras, tfqat


def check_same_architecture(spec, tfmot_summary=None):
    """Whether bench/common.py still rebuilds tfqat.training.models' net (and TFMOT's copy matches)."""
    keras, _ = _keras_and_tfqat()
    from tfqat.training import models

    ours = common.architecture_summary(common.build(
        keras, spec["name"], spec["input_shape"], spec.get("num_classes", 10), spec.get("alpha", 1.0)))
    if spec["name"] in models.MODELS:
        zoo = common.architecture_summary(models.build_model(
            spec["name"], tuple(spec["input_shape"]), spec.get("num_classes", 10), spec.get("alpha", 1.0)))
        if zoo != ours:
            raise RuntimeError(f"bench/common.py's {spec['name']} differs from tfqat.training.models'; "
                               "update common.build so TFMOT trains the same net.")
    if tfmot_summary is not None:
        return tfmot_summary == ours  # lists on both sides, as JSON gives them back
    return True


def _batch(spec, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, *spec["input_shape"]), dtype=np.float32)
    y = rng.integers(0, spec.get("num_classes", 10), BATCH)
    return x, y


def bench_step_time(config, tfmot, workdir):
    """B1: interleaved step times of float, tfqat before and after the BN freeze, and TFMOT."""
    keras, tfqat = _keras_and_tfqat()
    from tfqat.training import models

    import op_profile

    results = {}
    for spec in config.b1_models:
        check_same_architecture(spec)
        keras.utils.set_random_seed(0)
        x, y = _batch(spec, 0)
        float_model = models.build_model(spec["name"], tuple(spec["input_shape"]),
                                         spec["num_classes"], spec["alpha"])
        variants = {
            "float": float_model,
            # A delay that is never reached: the batch-statistics branch of the tf.cond.
            "tfqat before freeze": tfqat.quantize_model(
                float_model, tfqat.QuantConfig(bn_freeze_delay=10**9)),
            "tfqat after freeze": tfqat.quantize_model(
                float_model, tfqat.QuantConfig(bn_freeze_delay=0)),
        }
        steps = {}
        for label, model in variants.items():
            model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                          jit_compile=False)
            steps[label] = common.train_step_fn(model, x, y)
        times = common.interleaved_times(steps, config.b1_warmup, config.b1_rounds)
        profile = {label: op_profile.profile_steps(step, config.profile_steps)
                   for label, step in steps.items()}
        results[spec["key"]] = {"spec": spec, "params": int(float_model.count_params()),
                                "tfqat": {"times": times}, "profile": profile, "tfmot": None}
    if tfmot.available:
        specs = []
        for index, spec in enumerate(config.b1_models):
            path = workdir / f"b1_batch{index}.npz"
            np.savez(path, **dict(zip("xy", _batch(spec, 0))))
            specs.append({**spec, "batch_npz": str(path)})
        done = tfmot.run({"task": "step_time", "seed": 0, "models": specs,
                          "warmup": config.b1_warmup, "rounds": config.b1_rounds})
        for spec in config.b1_models:
            results[spec["key"]]["tfmot"] = _with_architecture_check(done, spec)
    return results


def _with_architecture_check(done, spec):
    """The worker's figures for `spec`, with whether its tf_keras net equals ours."""
    measured = (done or {}).get("models", {}).get(spec["key"])
    if measured is not None:
        measured["same_architecture"] = check_same_architecture(spec, measured.pop("architecture"))
    return measured


def _accuracy(probabilities, labels):
    return float(np.mean(np.asarray(probabilities).argmax(-1) == labels))


def tflite_fidelity(qat_probabilities, tflite, x, y, kernels="builtin"):
    """Top-1 agreement and output LSB differences of a .tflite against its own QAT model.

    The same code scores tfqat's and TFMOT's files: the QAT outputs come in as arrays.
    `kernels`: the LiteRT kernels that run the .tflite (see `run_tflite`).
    """
    from tfqat.diagnostics import evaluation

    return outputs_fidelity(qat_probabilities, evaluation.run_tflite(tflite, x, kernels=kernels),
                            y)


def outputs_fidelity(qat_probabilities, lite, y):
    """`tflite_fidelity` of outputs already computed (`lite`: run_tflite's TFLiteOutputs)."""
    qat = np.asarray(qat_probabilities, np.float64)
    dequantized = lite.dequantized.astype(np.float64)
    lsb = np.abs(dequantized - qat) / lite.scale

    def margin(outputs):  # top-1 minus top-2 output, in LSB
        top = np.sort(outputs)[-2:]
        return float((top[1] - top[0]) / lite.scale)

    flips = np.nonzero(dequantized.argmax(-1) != qat.argmax(-1))[0]
    return {"qat": _accuracy(qat, y), "int8": _accuracy(dequantized, y),
            "agreement": float(1 - len(flips) / len(qat)),
            "mean_lsb": float(lsb.mean()), "max_lsb": float(lsb.max()),
            "disagreements": [{"image": int(i), "qat_margin_lsb": margin(qat[i]),
                               "tflite_margin_lsb": margin(dequantized[i]),
                               "max_diff_lsb": float(lsb[i].max())} for i in flips]}


def _mnist(seed, limit):
    from tfqat.training import data

    dataset = data.load_dataset("mnist5k", seed=seed)
    if limit is None:
        return dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    return (dataset.x_train[:limit], dataset.y_train[:limit], dataset.x_test[:limit // 5],
            dataset.y_test[:limit // 5])


def bench_accuracy(config, tfmot, workdir):
    """B2 and B3: float, QAT and int8 accuracy on MNIST-5k, and .tflite fidelity, both tools.

    One float model per (model, seed) is trained here; both tools start QAT from
    its weights and see the training images in the same order with the same
    schedule (Adam, cosine decay from 1e-4), so they differ only in QAT itself.
    """
    keras, tfqat = _keras_and_tfqat()
    from tfqat.training import models

    runs, jobs = [], []
    for name in config.b2_models:
        for seed in config.b2_seeds:
            x_train, y_train, x_test, y_test = _mnist(seed, config.b2_train_limit)
            spec = {"name": name, "input_shape": list(x_train.shape[1:]), "num_classes": 10}
            check_same_architecture(spec)
            keras.utils.set_random_seed(seed)
            model = models.build_model(name, x_train.shape[1:], 10)
            float_orders = common.epoch_orders(len(x_train), config.b2_float_epochs, seed)
            qat_orders = common.epoch_orders(len(x_train), config.b2_qat_epochs, seed + 1000)
            common.compile_cosine(keras, model, FLOAT_LR, config.b2_float_epochs *
                                  common.steps_per_epoch(len(x_train), BATCH))
            common.fit_in_order(model, x_train, y_train, float_orders, BATCH)
            float_accuracy = _accuracy(model.predict(x_test, verbose=0), y_test)
            weights = common.layer_weights(model)

            qat_steps = config.b2_qat_epochs * common.steps_per_epoch(len(x_train), BATCH)
            start = time.perf_counter()
            qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=qat_steps // 2))
            common.compile_cosine(keras, qat, QAT_LR, qat_steps)
            common.fit_in_order(qat, x_train, y_train, qat_orders, BATCH)
            train_s = time.perf_counter() - start
            with contextlib.redirect_stdout(io.StringIO()):  # the converter prints signatures
                flatbuffer = tfqat.export_tflite(qat)
            tfqat_scores = tflite_fidelity(qat.predict(x_test, batch_size=256, verbose=0),
                                           flatbuffer, x_test, y_test)
            runs.append({"model": name, "seed": seed, "float": float_accuracy,
                         "examples": {"train": len(x_train), "test": len(x_test)},
                         "tfqat": {**tfqat_scores, "qat_train_s": train_s}, "tfmot": None})
            if tfmot.available:
                key = f"{name}-{seed}"
                npz = workdir / f"b2_{key}.npz"
                np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                         qat_orders=qat_orders, **weights)
                jobs.append({"key": key, "seed": seed, "spec": spec, "npz": str(npz),
                             "tflite": str(workdir / f"b2_{key}_tfmot.tflite"),
                             "predictions": str(workdir / f"b2_{key}_tfmot_qat.npz")})
    if jobs:
        done = tfmot.run({"task": "accuracy", "runs": jobs, "learning_rate": QAT_LR,
                          "batch_size": BATCH})
        by_key = {r["key"]: r for r in (done or {}).get("runs", [])}
        for run, job in zip(runs, jobs):
            if job["key"] not in by_key:
                continue
            x_test, y_test = _mnist(run["seed"], config.b2_train_limit)[2:]
            predictions = np.load(job["predictions"])["qat"]
            run["tfmot"] = {**tflite_fidelity(predictions, job["tflite"], x_test, y_test),
                            "float_copy": by_key[job["key"]]["float_accuracy"],
                            "qat_train_s": by_key[job["key"]]["qat_train_s"]}
    return runs


def tflite_latency(models, threads, config, delegates=True):
    """Interleaved invoke() times of .tflite models ({label: bytes}), batch 1.

    With `delegates`, ai-edge-litert applies its default delegate (XNNPACK), as a
    user gets it; without, the models run on the builtin kernels. Fast models get
    more rounds (config.b4_seconds), since a few-millisecond call is the most
    exposed to other processes. Returns {"times": {label: [s]}, "ratios": {label:
    stats vs "float"}}.
    """
    from tfqat.export.reader import load_interpreter

    rng = np.random.default_rng(0)
    steps = {}
    for label, content in models.items():
        interpreter = load_interpreter(content, kernels="xnnpack" if delegates else "builtin",
                                       num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        if np.dtype(detail["dtype"]) == np.int8:
            value = rng.integers(-128, 128, detail["shape"]).astype(np.int8)
        else:
            value = rng.random(detail["shape"], dtype=np.float32)
        interpreter.set_tensor(detail["index"], value)
        steps[label] = interpreter.invoke
    start = time.perf_counter()
    common.interleaved_times(steps, 0, max(config.b4_warmup, 1))
    per_round = (time.perf_counter() - start) / max(config.b4_warmup, 1)
    rounds = int(min(MAX_ROUNDS, max(config.b4_runs, config.b4_seconds / per_round)))
    times = common.interleaved_times(steps, 0, rounds)
    return {"times": times, "ratios": {label: common.ratio_stats(times[label], times["float"])
                                       for label in times if label != "float"}}


def size_breakdown(flatbuffer):
    """Bytes of a .tflite by kind, read from its flatbuffer: weights (buffers of
    tensors of rank >= 2), biases (rank 1), quantization parameters (a float32
    scale and an int64 zero point each) and the rest (graph structure, names)."""
    from tfqat.export.reader import stored_tensors

    sizes = dict.fromkeys(("weights", "biases", "quantization parameters"), 0)
    counted = set()
    for tensor in stored_tensors(flatbuffer):
        sizes["quantization parameters"] += 4 * tensor.num_scales + 8 * tensor.num_zero_points
        if tensor.buffer and tensor.buffer not in counted:
            counted.add(tensor.buffer)
            kind = "weights" if tensor.rank >= 2 else "biases"
            sizes[kind] += tensor.data_bytes
    sizes["rest"] = len(flatbuffer) - sum(sizes.values())
    return sizes


def bench_export(config, tfmot, workdir):
    """B5 then B4: tool wall times, then size and latency of the int8 vs the float .tflite."""
    keras, tfqat = _keras_and_tfqat()
    import tensorflow as tf

    results, files = {}, {}
    for index, spec in enumerate(config.b4_models):
        check_same_architecture(spec)
        keras.utils.set_random_seed(0)
        model = common.build(keras, spec["name"], spec["input_shape"], spec["num_classes"],
                             spec["alpha"])
        start = time.perf_counter()
        qat = tfqat.quantize_model(model)
        quantize_s = time.perf_counter() - start
        images = np.random.default_rng(0).random(
            (config.calibration_images, *spec["input_shape"]), dtype=np.float32)
        tfqat.calibrate(qat, images, method="minmax", batch_size=config.calibration_images)
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints signatures
            start = time.perf_counter()
            int8 = tfqat.export_tflite(qat)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            float_tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            float_convert_s = time.perf_counter() - start
        files[spec["key"]] = {"float": workdir / f"b4_{index}_float.tflite",
                              "tfqat int8": workdir / f"b4_{index}_tfqat.tflite",
                              "TFMOT int8": workdir / f"b4_{index}_tfmot.tflite"}
        files[spec["key"]]["float"].write_bytes(float_tflite)
        files[spec["key"]]["tfqat int8"].write_bytes(int8)
        results[spec["key"]] = {
            "spec": spec, "params": int(model.count_params()), "size_float": len(float_tflite),
            "size_int8": len(int8),
            "breakdown": {"float": size_breakdown(float_tflite), "int8": size_breakdown(int8)},
            "tfqat": {"quantize_s": quantize_s, "export_s": export_s},
            "float_convert_s": float_convert_s, "tfmot": None}
        del model, qat, int8, float_tflite
        keras.backend.clear_session()
    if tfmot.available:
        specs = [{**spec, "tflite": str(files[spec["key"]]["TFMOT int8"])}
                 for spec in config.b4_models]
        done = tfmot.run({"task": "tool_times", "seed": 0, "models": specs})
        for spec in config.b4_models:
            results[spec["key"]]["tfmot"] = _with_architecture_check(done, spec)
            path = files[spec["key"]]["TFMOT int8"]
            if results[spec["key"]]["tfmot"] and path.exists():
                results[spec["key"]]["breakdown"]["TFMOT int8"] = size_breakdown(path.read_bytes())
    for key, entry in results.items():
        models = {label: path.read_bytes() for label, path in files[key].items()
                  if path.exists()}
        entry["ops"] = {label: dict(tfqat.inspect_tflite(content).op_histogram)
                        for label, content in models.items()}
        entry["latency"] = {str(n): tflite_latency(models, n, config) for n in config.b4_threads}
        # Without XNNPACK: does the int8/float ratio come from the kernels or the delegate?
        entry["latency_builtin"] = tflite_latency(
            {k: models[k] for k in ("float", "tfqat int8")}, 1, config, delegates=False)
    return results


# ---- machine and versions -----------------------------------------------------------------

def machine_description():
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "os": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _git_revision():
    """A " (git <commit>)" suffix naming the checkout tfqat runs from and any local changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "tfqat")
    except (OSError, subprocess.SubprocessError):
        return ""
    if not commit:
        return ""
    return f" (git {commit}{', with uncommitted changes to tfqat/' if dirty else ''})"


def versions():
    """Versions of the packages the tfqat side runs on."""
    import tfqat

    return {"tfqat": tfqat.__version__ + _git_revision(), **common.package_versions(
        ("tensorflow", "keras", "ai-edge-litert", "numpy", "matplotlib", "mlxtend"))}


# ---- main ---------------------------------------------------------------------------------

def run(config, tfmot_option, workdir):
    """Runs every section; returns the results as a JSON-able dict."""
    started = time.perf_counter()
    results = {"config": dataclasses.asdict(config),
               "setup": {"batch_size": BATCH, "float_learning_rate": FLOAT_LR,
                         "qat_learning_rate": QAT_LR},
               "machine": machine_description(),
               "versions": versions(), "section_s": {}}
    tfmot = find_tfmot(tfmot_option, workdir)
    for key, function in (("b1", bench_step_time), ("b2", bench_accuracy), ("b4", bench_export)):
        section_start = time.perf_counter()
        print(f"[bench] {key} ...", file=sys.stderr, flush=True)
        results[key] = function(config, tfmot, workdir)
        results["section_s"][key] = time.perf_counter() - section_start
    results["tfmot"] = {"available": tfmot.available, "python": tfmot.python,
                        "note": tfmot.note, "versions": tfmot.versions}
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") \
        else None
    results["total_s"] = time.perf_counter() - started
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset that runs in a few minutes")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only
    parser.add_argument("--output", help="the markdown file to write (default: BENCHMARKS.md "
                        "in the repository, bench/results/quick/BENCHMARKS.md with --quick)")
    parser.add_argument("--tfmot_python", help="the Python interpreter that has tf-keras and "
                        "tensorflow-model-optimization ('none' skips TFMOT)")
    args = parser.parse_args(argv)
    config = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.output:
        output = pathlib.Path(args.output)
    elif args.quick or args.tiny:
        output = BENCH / "results" / "quick" / "BENCHMARKS.md"
    else:
        output = ROOT / "BENCHMARKS.md"
    with tempfile.TemporaryDirectory(prefix="tfqat_bench_") as workdir:
        results = run(config, args.tfmot_python, pathlib.Path(workdir))
    import report

    plots_dir = BENCH / "plots" if output.resolve() == (ROOT / "BENCHMARKS.md").resolve() \
        else output.parent / "plots"
    report.write(results, output, plots_dir)
    print(f"[bench] wrote {output} in {results['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
