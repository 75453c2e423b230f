"""Runs a .tflite on a dataset and compares it with the Keras model it came from."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

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


def run_tflite(model, x, batch_size: int = 256, progress: bool = False) -> TFLiteOutputs:
    """Runs a single-input, single-output .tflite (bytes or path) on float inputs `x`.

    An int8 input is fed `x` quantized with the input tensor's scale and zero
    point; the input tensor is resized to run `batch_size` examples at a time.

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat_model)
      >>> out = run_tflite(flatbuffer, data.x_test)
      >>> out.raw.dtype, out.dequantized.argmax(-1)[:3]
      (dtype('int8'), array([7, 2, 1]))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    model = read_tflite(model)
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"run_tflite runs models with one input and one output; this one has "
                         f"{len(inputs)} inputs and {len(outputs)} outputs.")
    x = np.asarray(x)
    expected = inputs[0].shape[1:]
    if x.ndim == 0 or len(x) == 0 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"x has shape {x.shape}; the model takes (N, "
                         f"{', '.join(map(str, expected))}) with N >= 1.")
    interpreter = model.interpreter()
    in_index, out_index = inputs[0].index, outputs[0].index
    batches, current = [], None
    progress_bar = keras.utils.Progbar(len(x), unit_name="example") if progress else None
    for start in range(0, len(x), batch_size):
        batch = quantize_input(x[start:start + batch_size], inputs[0])
        if len(batch) != current:
            interpreter.resize_tensor_input(in_index, batch.shape)
            interpreter.allocate_tensors()
            current = len(batch)
        interpreter.set_tensor(in_index, batch)
        interpreter.invoke()
        if progress_bar is not None:
            progress_bar.add(len(batch))
        batches.append(interpreter.get_tensor(out_index))
    raw = np.concatenate(batches)
    out = outputs[0]
    if not out.is_quantized:
        return TFLiteOutputs(raw, raw.astype(np.float32), 1.0, 0)
    return TFLiteOutputs(raw, dequantize(raw, out, np.float32), out.scale, out.zero_point)


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
                     progress: bool = False) -> Comparison:
    """Runs the Keras model and the .tflite on `x` and compares their outputs.

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat_model)
      >>> c = compare_to_model(qat_model, flatbuffer, data.x_test, data.y_test)
      >>> c.agreement, c.max_diff_lsb
      (1.0, 1.0)
    """
    lite = run_tflite(tflite, x, batch_size=batch_size, progress=progress)
    keras_out = np.asarray(qat_model.predict(x, batch_size=batch_size, verbose=0), np.float32)
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


def converter_ptq(float_model, samples, num_samples: int = 256) -> bytes:
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
    return converter.convert()
