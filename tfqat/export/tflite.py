"""Export of a QAT model to an integer-only .tflite with int8 input and output."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import tensorflow as tf

from tfqat.nn.activations import QuantActivation
from tfqat.config import EXPORT_MAX_BITS
from tfqat.files import atomic_write_bytes
from tfqat.logs import quiet_native_output
from tfqat.export.reader import (FLOAT_OPS_ALLOWED_METADATA, INPUT_ORDER_METADATA, add_metadata,
                                 inspect_tflite)
from tfqat.nn.layers import FusedQuantLayer, QuantEinsumBatchMatMul
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.rewrite.graph import all_layers
from tfqat.rewrite.record import QATModel, find_quantizer, record_of


class ExportError(ValueError):
    """The model cannot be exported as an integer-only .tflite."""


class NotIntegerOnlyError(ExportError):
    """The converted model still has float ops."""

    def __init__(self, message, float_ops, layer_names):
        super().__init__(message)
        self.float_ops = float_ops
        self.layer_names = layer_names


def export_tflite(qat_model, path=None, allow_float_ops: bool = False) -> bytes:
    """Converts a QAT model to an integer-only .tflite (int8 in, int8 out).

    The result is checked: every op's tensors must be int8 or int32 and no
    QUANTIZE/DEQUANTIZE may remain. With `path`, the file is written
    atomically, and nothing is written when anything fails.

    With `allow_float_ops=True` the model may be a hybrid on purpose: layers
    left in float (QuantConfig.exclude) are not refused, and ops the converter
    keeps in float (with DEQUANTIZE/QUANTIZE around them) are allowed. The
    .tflite then carries a metadata entry that `inspect_tflite` reports
    ("hybrid: float ops kept on purpose"). Excluded layers that the converter
    can quantize on its own (a Conv2D between int8 tensors) it still
    quantizes, from their float weights; ops without int8 kernels stay float.

    Example:
      >>> qat = tfqat.quantize_model(model)
      >>> qat.fit(x, y, epochs=1)
      >>> flatbuffer = export_tflite(qat, "model_int8.tflite")
      >>> hybrid = export_tflite(tfqat.quantize_model(model, tfqat.QuantConfig(
      ...     exclude=("custom_op",))), allow_float_ops=True)  # after calibration
    """
    check_exportable(qat_model, allow_float_ops=allow_float_ops)
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with quiet_native_output(), _distinct_bias_channels(qat_model), _converting(qat_model):
            # TFQAT_VERBOSE=1 shows the converter's own output
            flatbuffer = converter.convert()
    except Exception as err:  # the converter raises several private error types
        raise _converter_failed(qat_model, err) from err
    if len(qat_model.inputs) > 1:
        # The file's signature lists inputs by name; lists of inputs follow Keras's order.
        names = [tensor.name for tensor in qat_model.inputs]
        flatbuffer = add_metadata(flatbuffer, INPUT_ORDER_METADATA, json.dumps(names).encode())
    if allow_float_ops:
        flatbuffer = _mark_float_ops_allowed(flatbuffer)
    else:
        report = inspect_tflite(flatbuffer)
        if not report.integer_only:
            raise _not_integer_only(qat_model, report)
    if path is not None:
        atomic_write_bytes(path, flatbuffer)
    return flatbuffer


def check_exportable(qat_model, allow_float_ops: bool = False) -> None:
    """Raises ExportError for a model that export_tflite cannot make integer-only.

    With `allow_float_ops=True`, float (excluded or unquantized) layers pass.

    Example:
      >>> check_exportable(tfqat.quantize_model(model))  # raises: never calibrated
    """
    fused = [l for l in qat_model.layers if isinstance(l, FusedQuantLayer)]
    record = getattr(qat_model, "quantization_record", None)
    # A QAT model may hold no quantizer layer at all: Embedding -> Flatten is a GATHER of the
    # int8 table and a RESHAPE at the table's scale.
    quantized = record is not None and any(d.rule != "excluded" for d in record.decisions)
    if not any(isinstance(l, ActivationQuantizer) for l in qat_model.layers) and not fused \
            and not quantized:
        raise ExportError(
            f"Model '{qat_model.name}' has no tfqat quantizers: it is a float model. "
            "Run tfqat.quantize_model(model), train or calibrate it, then export.")
    record = record_of(qat_model)
    # Every quantizer the record lists, those inside layers (composite layers) included.
    quantizers = [find_quantizer(qat_model, entry) for entry in record.quantizers]
    float_layers = [f"{name} ({type(qat_model.get_layer(name)).__name__})"
                    for name in record.float_layers]
    if float_layers and not allow_float_ops:
        raise ExportError(
            f"These layers are float in model '{qat_model.name}' (excluded, or not quantized): "
            f"{', '.join(float_layers)}. An integer-only .tflite cannot hold them; quantize "
            "them (remove them from QuantConfig.exclude), or export a hybrid model on purpose "
            "with export_tflite(..., allow_float_ops=True).")
    too_wide = [f"{l.name} (activation_bits={l.bits})" for l in qat_model.layers
                if isinstance(l, (ActivationQuantizer, QuantActivation)) and l.bits > EXPORT_MAX_BITS]
    too_wide += [f"{l.name} (weight_bits={l.weight_bits})" for l in qat_model.layers
                 if isinstance(l, (FusedQuantLayer, QuantEinsumBatchMatMul))
                 and l.weight_bits > EXPORT_MAX_BITS]
    if too_wide:
        raise ExportError(
            f"Export to int8 needs at most {EXPORT_MAX_BITS} bits, but these layers use more: "
            f"{', '.join(too_wide)}. Quantize with bits <= {EXPORT_MAX_BITS} for them.")
    narrow = [f"{l.name} (activation_bits={l.bits})" for l in qat_model.layers
              if isinstance(l, (ActivationQuantizer, QuantActivation)) and l.bits < EXPORT_MAX_BITS]
    if narrow:
        # The converter gives every activation tensor an 8-bit scale (range / 255) whatever
        # the fake quant's bits, and has no int4 activation kernels: the .tflite would not
        # compute what the QAT model simulates (range / (2^bits - 1)).
        raise ExportError(
            f"Export needs activation_bits={EXPORT_MAX_BITS}, but these layers use fewer: "
            f"{', '.join(narrow)}. TFLite's int8 kernels quantize activations to 8 bits "
            "(range / 255), so the .tflite would not compute what a QAT model with "
            f"fewer activation bits simulates. Quantize with activation_bits={EXPORT_MAX_BITS} "
            "to export (fewer activation bits are for simulation only; weight_bits may be lower).")
    uncalibrated = [l.name for l in quantizers if not l.is_calibrated]
    if uncalibrated:
        raise ExportError(
            f"Activation ranges were never observed for: {', '.join(uncalibrated)}. "
            "Train the QAT model (model.fit) or run a calibration pass before export.")


@contextlib.contextmanager
def _distinct_bias_channels(qat_model):
    """Converts with no per-channel bias whose channels all hold one non-zero value.

    TF 2.21's converter quantizes such a bias (a splat constant) with channel 0's
    scale s_in * s_w[0] for every channel, where each needs its own s_w[c]: measured
    94 LSB off at the conv's output, silently. While converting, one channel of such a
    bias is moved by the smallest step that makes it differ (a few float32 ulps: its
    int32 value changes, if at all, by one unit of s_in * s_w, far below an output
    LSB); the variables are restored afterwards. (A check of the written file cannot
    tell this from small biases that round to one int32 value in every channel.)
    """
    saved = []
    try:
        for layer in all_layers(qat_model):
            if isinstance(layer, FusedQuantLayer) and layer.per_channel:
                nudged = _nudge_splat_bias(layer)
                if nudged is not None:
                    saved.append(nudged)
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def _nudge_splat_bias(layer):
    """(variable, its old value) after moving the last channel of `layer`'s splat bias, or None."""
    bias = layer.folded_bias()
    if bias is None:
        return None
    values = bias.numpy()
    if values.size < 2 or values[0] == 0 or np.any(values != values[0]):
        return None
    for variable in (layer.beta, layer.bias, layer.moving_mean):
        if variable is None:
            continue
        old = variable.numpy()
        step = np.float32(np.spacing(np.float32(values[-1])))
        for _ in range(64):
            moved = old.copy()
            moved.reshape(-1)[-1] += step
            variable.assign(moved)
            if layer.folded_bias().numpy()[-1] != values[-1]:
                return variable, old
            step *= 2
        variable.assign(old)
    return None  # no variable moves it (a zero gamma)


def _converting(model):
    """QATModel.converting() (no tf.saved_model.save warning), or nothing for other models."""
    return model.converting() if isinstance(model, QATModel) else contextlib.nullcontext()


def _mark_float_ops_allowed(flatbuffer: bytes) -> bytes:
    """The same model with a metadata entry saying that float ops are kept on purpose."""
    return add_metadata(flatbuffer, FLOAT_OPS_ALLOWED_METADATA, b"allow_float_ops=True")


def _layers_named_in(text, model) -> list:
    """The model's layers whose name scopes appear in `text` (TF op or MLIR location names),
    in order of appearance. A traced scope is the layer's name, maybe with a suffix `_<n>`."""
    names = {layer.name for layer in model.layers}
    found = []
    for token in re.split(r"[;/:@\"\[\], ]", text):
        for name in (token, re.sub(r"_\d+$", "", token)):
            if name in names and name not in found:
                found.append(name)
                break
    return found


# The boundary of a float region: the converter dequantizes into it and quantizes out of it.
_BOUNDARY_OPS = ("DEQUANTIZE", "QUANTIZE")


def _not_integer_only(model, report) -> NotIntegerOnlyError:
    """The error for a converted model with float ops: the ops that compute in float first,
    each with its layer, then the DEQUANTIZE/QUANTIZE ops around them."""
    computing, boundary, first_names, other_names = [], [], [], []
    for op in report.float_ops:
        found = _layers_named_in(";".join(t.name for t in op.outputs), model)
        layers = ", ".join(found) or "unknown"
        if op.name in _BOUNDARY_OPS:
            boundary.append(f"{op.name} (op {op.index}, from layers: {layers})")
            other_names += found
        else:
            computing.append(f"{op.name} (op {op.index}) in layer{'s' if len(found) > 1 else ''} "
                             f"{layers}")
            first_names += found
    if computing:
        what = f"float ops: {'; '.join(computing)}"
        if boundary:
            what += f" (converted to and from int8 by {'; '.join(boundary)})"
    else:
        what = f"float ops: {'; '.join(boundary)}"
    message = (f"Model '{model.name}' did not convert to integer-only kernels; {what}. Make "
               "sure these layers are quantized (not excluded) and supported by a tfqat rule, "
               "or export a hybrid model on purpose with allow_float_ops=True.")
    # The layers of the float ops first: those are the ones to change.
    layer_names = list(dict.fromkeys([*first_names, *other_names]))
    return NotIntegerOnlyError(message, report.float_ops, layer_names)


# What to change for converter errors seen with TF 2.21 (message fragment -> advice).
_CONVERTER_ADVICE = (
    ("mismatched quantized axes",
     "a per-channel quantized weight passes a transpose on its way to the op (a matmul or "
     "transposed-conv kernel); quantize the weights of {layers} per tensor: "
     "QuantConfig(overrides={{'{first}': {{'per_channel': False}}}}), or "
     "WeightQuant(per_channel=False) for a registered layer"),
    ("cast compatible",
     "a reshape moves the quantized axis of a per-channel weight; quantize the weights of "
     "{layers} per tensor: QuantConfig(overrides={{'{first}': {{'per_channel': False}}}})"),
    ("same scale constraint",
     "the int8 kernel of {layers} needs its output at its input's scale (average pooling, "
     "resizing, concatenation); give it no fake quant of its own (scale='input' or 'shared' "
     "for a registered layer)"),
)


def _converter_failed(model, err) -> ExportError:
    """The converter's error, with its long MLIR location cut down to the Keras layers named
    in it, and what to change."""
    text = str(err)
    line = _first_line(err)
    # "<unknown>:0: error: loc(callsite(fused["MatMul:", "model_1/tiny_1/MatMul@..."] ...)):
    # 'tfl.transpose' op has mismatched quantized axes": the message follows the location.
    location, _, reason = line.rpartition(")): ")
    reason = reason or line
    layers = _layers_named_in(location or text, model)
    where = f" at layer {', '.join(repr(n) for n in layers)}" if layers else ""
    advice = ("exclude the layer (QuantConfig(exclude=(...))) and export with "
              "allow_float_ops=True, or change it to layers tfqat quantizes")
    for fragment, text_ in _CONVERTER_ADVICE:
        if fragment in reason:
            advice = text_.format(layers=", ".join(repr(n) for n in layers) or "the layer",
                                  first=layers[0] if layers else "<layer>")
            break
    return ExportError(f"The TFLite converter failed on model '{model.name}'{where}: "
                       f"{reason.strip()}. To fix: {advice}.")


def _first_line(err) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if "error:" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(err).__name__
