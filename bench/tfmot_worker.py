"""The TFMOT side of bench/run.py, in its own process.

TFMOT needs legacy Keras 2 (tf_keras), which TF_USE_LEGACY_KERAS=1 switches on
for the whole process, so this script never imports tfqat and bench/run.py
never imports TFMOT. bench/run.py writes a job (.json, arrays in .npz files)
and reads back a result (.json, predictions in .npz, .tflite files):

  TF_USE_LEGACY_KERAS=1 python bench/tfmot_worker.py JOB.json RESULT.json

Tasks: "probe" (versions), "step_time" (B1), "accuracy" (B2/B3), "tool_times" (B5),
"layers" (bench/layer_coverage.py).
"""

import contextlib
import io
import json
import os
import pathlib
import platform
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # benchmarks run on the CPU
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402


def _versions():
    return {"python": platform.python_version(), **common.package_versions(
        ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy"))}


def _imports():
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    return tf, tf_keras, tfmot


def _build(tf_keras, spec):
    return common.build(tf_keras, spec["name"], spec["input_shape"], spec.get("num_classes", 10),
                        spec.get("alpha", 1.0))


def _convert_int8(tf, qat_model):
    """TFMOT's documented export: the TFLite converter on the QAT model, int8 in and out."""
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its signatures
        return converter.convert()


def probe(job):
    """Checks that TFMOT imports and says which versions run."""
    _imports()
    return {"versions": _versions()}


def step_time(job):
    """B1: interleaved training-step times, float tf_keras model vs TFMOT QAT model."""
    _, tf_keras, tfmot = _imports()
    results = {}
    for spec in job["models"]:
        arrays = np.load(spec["batch_npz"])
        x, y = arrays["x"], arrays["y"]
        tf_keras.utils.set_random_seed(job["seed"])
        float_model = _build(tf_keras, spec)
        qat_model = tfmot.quantization.keras.quantize_model(float_model)
        steps = {}
        for label, model in (("float", float_model), ("tfmot", qat_model)):
            model.compile(tf_keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                          jit_compile=False)
            steps[label] = common.train_step_fn(model, x, y)
        times = common.interleaved_times(steps, job["warmup"], job["rounds"])
        results[spec["key"]] = {"times": times, "params": int(float_model.count_params()),
                                "architecture": common.architecture_summary(float_model)}
    return {"models": results, "versions": _versions()}


def accuracy(job):
    """B2/B3: QAT from the float weights tfqat's side trained, with the same data order and
    schedule; writes the int8 .tflite and the QAT model's test predictions."""
    tf, tf_keras, tfmot = _imports()
    runs = []
    for run in job["runs"]:
        arrays = np.load(run["npz"])
        tf_keras.utils.set_random_seed(run["seed"])
        model = _build(tf_keras, run["spec"])
        common.set_layer_weights(model, {k: arrays[k] for k in arrays.files if "/" in k})
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        float_accuracy = model.evaluate(arrays["x_test"], arrays["y_test"], verbose=0)[1]
        start = time.perf_counter()
        qat = tfmot.quantization.keras.quantize_model(model)
        orders = arrays["qat_orders"]
        common.compile_cosine(tf_keras, qat, job["learning_rate"],
                              len(orders) * common.steps_per_epoch(orders.shape[1], job["batch_size"]))
        common.fit_in_order(qat, arrays["x_train"], arrays["y_train"], orders, job["batch_size"])
        train_s = time.perf_counter() - start
        predictions = qat.predict(arrays["x_test"], batch_size=256, verbose=0)
        flatbuffer = _convert_int8(tf, qat)
        common.atomic_write(run["tflite"], flatbuffer)
        np.savez(run["predictions"], qat=np.asarray(predictions, np.float32))
        runs.append({"key": run["key"], "float_accuracy": float(float_accuracy),
                     "qat_train_s": train_s})
    return {"runs": runs, "versions": _versions()}


def tool_times(job):
    """B5: wall time of tfmot quantize_model and of the int8 conversion."""
    tf, tf_keras, tfmot = _imports()
    results = {}
    for spec in job["models"]:
        tf_keras.utils.set_random_seed(job["seed"])
        model = _build(tf_keras, spec)
        start = time.perf_counter()
        qat = tfmot.quantization.keras.quantize_model(model)
        quantize_s = time.perf_counter() - start
        start = time.perf_counter()
        flatbuffer = _convert_int8(tf, qat)
        export_s = time.perf_counter() - start
        common.atomic_write(spec["tflite"], flatbuffer)
        results[spec["key"]] = {"quantize_s": quantize_s, "export_s": export_s,
                                "params": int(model.count_params()), "size": len(flatbuffer),
                                "architecture": common.architecture_summary(model)}
    return {"models": results, "versions": _versions()}


def layers(job):
    """Layer coverage: TFMOT's quantize_model on each probe of bench/layer_probes.py."""
    import layer_probes

    _, tf_keras, tfmot = _imports()
    results = {}
    for name in job["names"]:
        if name in layer_probes.NOT_PROBED:
            results[name] = "not probed"
            continue
        try:
            model, _, _ = layer_probes.build(tf_keras, name)
        except layer_probes.NotInThisKeras:
            results[name] = "not in Keras 2"
            continue
        except Exception as err:  # tf_keras builds the probe differently
            results[name] = f"probe does not build in tf_keras ({type(err).__name__})"
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                tfmot.quantization.keras.quantize_model(model)
            results[name] = "accepted"
        except Exception as err:  # TFMOT raises RuntimeError, ValueError, TypeError...
            text = " ".join(str(err).split())
            results[name] = ("refused: not supported" if "is not supported" in text else
                             f"fails: {type(err).__name__} in quantize_model")
    return results


TASKS = {"probe": probe, "step_time": step_time, "accuracy": accuracy, "tool_times": tool_times,
         "layers": layers}


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} JOB.json RESULT.json")
    job = json.loads(pathlib.Path(argv[1]).read_text())
    result = TASKS[job["task"]](job)
    common.atomic_write(argv[2], json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
