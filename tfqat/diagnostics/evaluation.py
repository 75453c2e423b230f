"""Runs a .tflite on a dataset and compares it with the Keras model it came from."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfqat.logs import quiet_native_output
from tfqat.export.reader import TensorInfo, dequantize, quantize, read_tflite


@dataclasses.dataclass(frozen=True, eq=False)
class TFLiteOutputs:
    """What `run_tflite` returns.

    raw: the output tensor as the interpreter wrote it (int8 for an int8 model).
    dequantized: float32, (raw - zero_point) * scale; raw itself for a float model.
    scale, zero_point: the output tensor's quantization (1.0 and 0 for a float model).
    """

    raw: np.ndarray
    dequantized: np.ndarray
    scale: float
    zero_point: int


def quantize_input(x, tensor) -> np.ndarray:
    """`x` (float) in the dtype of an input tensor: a reader TensorInfo or an interpreter detail.

    Rounds half up, as the QAT model's input FakeQuant does, so the .tflite sees
    the same integers that the QAT model saw as fake-quantized floats.

    Example:
      >>> model = tfqat.export.reader.read_tflite(flatbuffer)
      >>> quantize_input(x_test[:1], model.inputs[0]).dtype
      dtype('int8')
    """
    if not isinstance(tensor, TensorInfo):
        tensor = TensorInfo.from_detail(tensor)
    return quantize(x, tensor)


def _input_arrays(model, x) -> list:
    """`x` as one array per .tflite input, in `model.inputs` order (Keras's)."""
    names = model.input_names
    if isinstance(x, dict):
        if sorted(x) != sorted(names):
            raise ValueError(f"x has keys {sorted(x)}, but the .tflite's inputs are {names}; key "
                             "the arrays by input name.")
        arrays = [x[name] for name in names]
    elif isinstance(x, (list, tuple)) and len(names) > 1:
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(model.inputs):
        raise ValueError(f"x holds {len(arrays)} input arrays; the .tflite has "
                         f"{len(model.inputs)} inputs ({', '.join(names)}).")
    arrays = [np.asarray(a) for a in arrays]
    for array, tensor, name in zip(arrays, model.inputs, names):
        expected = tensor.shape[1:]
        if array.ndim == 0 or len(array) == 0 or tuple(array.shape[1:]) != expected:
            raise ValueError(f"x{'' if len(arrays) == 1 else f' ({name})'} has shape "
                             f"{array.shape}; the model takes (N, "
                             f"{', '.join(map(str, expected))}) with N >= 1.")
    if len({len(a) for a in arrays}) > 1:
        raise ValueError("x has input arrays of different lengths; give every input the same "
                         "number of examples.")
    return arrays


def run_tflite(model, x, batch_size: int = 256, progress: bool = False, kernels: str = "builtin"):
    """Runs a .tflite (bytes or path) on float inputs `x`.

    `x`: an array for a one-input model; else a list (Keras input order) or a
    dict keyed by input name. An int8 input is fed `x` quantized with the
    input tensor's scale and zero point; the inputs are resized to run
    `batch_size` examples at a time. Returns TFLiteOutputs, or for a model
    with several outputs a list of them in the Keras model's output order (the
    converter reorders outputs in the file; its signature keeps Keras's order).

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat_model)
      >>> out = run_tflite(flatbuffer, data.x_test)
      >>> out.raw.dtype, out.dequantized.argmax(-1)[:3]
      (dtype('int8'), array([7, 2, 1]))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    model = read_tflite(model)
    arrays = _input_arrays(model, x)
    interpreter = model.interpreter(kernels=kernels)
    batches, current = [[] for _ in model.outputs], None
    total = len(arrays[0])
    progress_bar = keras.utils.Progbar(total, unit_name="example") if progress else None
    for start in range(0, total, batch_size):
        inputs = [quantize_input(a[start:start + batch_size], t) for a, t in zip(arrays, model.inputs)]
        if len(inputs[0]) != current:
            for batch, tensor in zip(inputs, model.inputs):
                interpreter.resize_tensor_input(tensor.index, batch.shape)
            interpreter.allocate_tensors()
            current = len(inputs[0])
        for batch, tensor in zip(inputs, model.inputs):
            interpreter.set_tensor(tensor.index, batch)
        interpreter.invoke()
        if progress_bar is not None:
            progress_bar.add(current)
        for outputs, tensor in zip(batches, model.outputs):
            outputs.append(interpreter.get_tensor(tensor.index))
    results = [_outputs(np.concatenate(raw), tensor) for raw, tensor in zip(batches, model.outputs)]
    return results[0] if len(results) == 1 else results


def _outputs(raw, tensor) -> TFLiteOutputs:
    if not tensor.is_quantized:
        return TFLiteOutputs(raw, raw.astype(np.float32), 1.0, 0)
    return TFLiteOutputs(raw, dequantize(raw, tensor, np.float32), tensor.scale, tensor.zero_point)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How a .tflite agrees with its Keras (QAT) model on a set of inputs.

    Output differences are in output LSBs: |tflite - keras| / output scale.
    Accuracies are None when no labels were given.
    """

    num_examples: int
    agreement: float
    max_diff_lsb: float
    mean_diff_lsb: float
    tflite_accuracy: float | None = None
    model_accuracy: float | None = None


def compare_to_model(qat_model, tflite, x, y=None, batch_size: int = 256,
                     progress: bool = False):
    """Runs the Keras model and the .tflite on `x` and compares their outputs.

    `x` (and `y`) as `model.predict` (and `fit`) take them; see `run_tflite`
    for several inputs. Returns a Comparison, or one per output (a list in the
    Keras model's output order) for a model with several outputs.

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat_model)
      >>> c = compare_to_model(qat_model, flatbuffer, data.x_test, data.y_test)
      >>> c.agreement, c.max_diff_lsb
      (1.0, 1.0)
    """
    lite = run_tflite(tflite, x, batch_size=batch_size, progress=progress)
    keras_out = qat_model.predict(x, batch_size=batch_size, verbose=0)
    lites = lite if isinstance(lite, list) else [lite]
    keras_outs = [np.asarray(o, np.float32) for o in keras.tree.flatten(keras_out)]
    labels = keras.tree.flatten(y) if y is not None else [None] * len(lites)
    if len(keras_outs) != len(lites) or len(labels) != len(lites):
        raise ValueError(f"The Keras model has {len(keras_outs)} outputs and the .tflite "
                         f"{len(lites)}; labels were given for {len(labels)}.")
    comparisons = [_compare(k, t, labels_) for k, t, labels_ in zip(keras_outs, lites, labels)]
    return comparisons[0] if len(comparisons) == 1 else comparisons


def _compare(keras_out, lite, y) -> Comparison:
    if keras_out.shape != lite.dequantized.shape:
        raise ValueError(f"The Keras model's output shape {keras_out.shape} differs from the "
                         f".tflite's {lite.dequantized.shape}.")
    diff_lsb = np.abs(lite.dequantized.astype(np.float64) - keras_out) / lite.scale
    lite_top1, keras_top1 = lite.dequantized.argmax(-1), keras_out.argmax(-1)
    accuracies = {}
    if y is not None:
        y = np.asarray(y).reshape(-1)
        accuracies = dict(tflite_accuracy=float(np.mean(lite_top1 == y)),
                          model_accuracy=float(np.mean(keras_top1 == y)))
    return Comparison(
        num_examples=len(keras_out), agreement=float(np.mean(lite_top1 == keras_top1)),
        max_diff_lsb=float(diff_lsb.max()), mean_diff_lsb=float(diff_lsb.mean()), **accuracies)


def converter_ptq(float_model, samples, num_samples: int = 256, per_channel: bool = True) -> bytes:
    """The TFLite converter's own full-integer post-training quantization of a float model.

    A baseline to compare tfqat against: int8 input/output, ranges from
    `representative_dataset` over the first `num_samples` of `samples`.

    Example:
      >>> baseline = converter_ptq(float_model, data.x_train)
      >>> compare_to_model(float_model, baseline, data.x_test, data.y_test).tflite_accuracy
      0.978
    """
    import tensorflow as tf

    samples = np.asarray(samples, np.float32)[:num_samples]

    def representative_dataset():
        for index in range(len(samples)):
            yield [samples[index:index + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(float_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if not per_channel:
        converter._experimental_disable_per_channel = True  # the converter's per-tensor switch
    with quiet_native_output():
        return converter.convert()
