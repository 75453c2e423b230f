"""Batched integer evaluation: the .tflite's int8 arithmetic, run as one TensorFlow graph.

`evaluate_int8(model, data)` reads the integer-only .tflite (exported from a QAT
model, or given as a flatbuffer or path) with the one reader
(`tfqat.export.reader`) and builds a `tf.function` that runs its ops on whole
batches with integer arithmetic in int64 tensors, the way LiteRT's reference
kernels compute them:

- CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / BATCH_MATMUL accumulate
  (x - zero point) * w; the convolution itself runs on float32 or float64, which
  is exact because every partial sum of the integer products is an integer below
  2^24 (float32) or 2^53 (float64), and the result is rounded back to an integer;
- requantization as TFLite does it: the real multiplier (computed from the float32
  scales in double, or float, precision as each kernel's Prepare does) becomes a
  31-bit mantissa and a shift (QuantizeMultiplier: round half away from zero), then
  SaturatingRoundingDoublingHighMul and RoundingDivideByPOT, the reference
  kernels' double rounding (computed exactly as one multiply and one shift, see
  `multiply_by_quantized_multiplier`); FULLY_CONNECTED rounds once, as LiteRT's
  reference kernel does (measured); then the zero point and the fused
  activation's clamp. Every int8 MEAN is QuantizedMeanOrSum (1/count folded into
  the multiplier), which the reference kernels use for all of them (measured).

Per op (`EXACTNESS`), checked op by op against
`load_interpreter(kernels="reference")` by tests/test_int8_eval.py (each op fed
the interpreter's own input tensors, on CNN, merge and transformer graphs):

- bit-exact by construction (integer formulas): CONV_2D, DEPTHWISE_CONV_2D,
  FULLY_CONNECTED, BATCH_MATMUL, ADD, SUB, MUL, AVERAGE_POOL_2D, MAX_POOL_2D,
  MEAN, RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, CONCATENATION (equal scales),
  PAD, PADV2, QUANTIZE (int8 -> int8), DEQUANTIZE, MAXIMUM, MINIMUM, RELU, RELU6,
  GATHER, SHAPE / STRIDED_SLICE / PACK (the shape arithmetic of a reshape with
  a dynamic batch, and copies of int8 slices), and NOT_EQUAL / SELECT_V2 (an
  int32 or bool attention mask choosing int8 values at one scale).
- bit-exact where tested, by a float32 formula: LOGISTIC, TANH, GELU, RSQRT (a
  256-entry table of the function in float32, rounded half away from zero, as
  LiteRT builds it). These depend on float32 libm results: a last-bit difference
  in exp or tanh could move a value that sits on a rounding boundary by 1 LSB.
- SOFTMAX: the builtin kernel's formula (a float32 table of exp(-s * beta * (max -
  x)), summed in order, times 1 / (sum * output scale), rounded half away from
  zero): bit-exact with the builtin kernel, which also serves the default XNNPACK
  interpreter (XNNPACK takes no int8 softmax). The reference kernel computes it in
  gemmlowp fixed point, which differs by 1 LSB where the probability is within
  about 1e-5 LSB of a half (2 of 20,000 values on convnet_bn, measured).

The builtin kernels (`kernels="builtin"`, LiteRT's optimized ones) differ from the
reference kernels by 1 LSB on a few values of CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED and MEAN (about 0.1-9% of values, measured). XNNPACK (the default
interpreter) requantizes in float32: `kernels="xnnpack"` computes CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED (float32(acc) * float32 scale, rounded half to
even) and MEAN (float32(sum - n * zp) * in_scale / (out_scale * n)) that way, and
was bit-exact with the XNNPACK interpreter on conv / depthwise / add / max-pool /
mean / softmax graphs; its other ops stay the reference kernels' (measured 99.7%
of output values equal on a sigmoid / tanh / mul / sub / avg-pool graph, 65% on a
transformer block, whose FULLY_CONNECTED and merges XNNPACK computes its own way).
Figures: docs/design.md ("Integer evaluation").

A grouped CONV_2D (filter depth C / groups) runs group by group. Any other op, or an
op whose form is not covered (a reduction or concatenation over the batch axis, ...),
raises `UnsupportedOpError` naming the op before anything runs. The batch is axis 0 of every tensor (a tensor whose file
shape starts with n has n * batch rows).

Example:
  >>> result = tfqat.evaluate_int8(qat_model, x_test, labels=y_test)
  >>> result.accuracy, result.outputs.raw.dtype
  (0.981, dtype('int8'))
  >>> program = Int8Model(tfqat.export_tflite(qat_model))
  >>> program.run_quantized(x_int8)[0].shape  # one int8 array per model output
  (512, 10)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfqat.diagnostics.evaluation import TFLiteOutputs
from tfqat.export.reader import dequantize, quantize, read_tflite

BIT_EXACT = "bit-exact"
FLOAT_LUT = "bit-exact where tested: a float32 table of the function, as LiteRT builds it"
FLOAT_SOFTMAX = ("bit-exact with the builtin kernel (which XNNPACK leaves int8 softmax to); "
                 "the reference kernel's fixed point differs by 1 LSB on rare near-halves")

EXACTNESS = {
    **{name: BIT_EXACT for name in (
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL",
        "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
        "TRANSPOSE", "CONCATENATION", "PAD", "PADV2", "QUANTIZE", "DEQUANTIZE", "MAXIMUM",
        "MINIMUM", "RELU", "RELU6", "GATHER", "SHAPE", "STRIDED_SLICE", "PACK", "NOT_EQUAL",
        "SELECT_V2")},
    "LOGISTIC": FLOAT_LUT, "TANH": FLOAT_LUT, "GELU": FLOAT_LUT, "RSQRT": FLOAT_LUT,
    "SOFTMAX": FLOAT_SOFTMAX,
}

_INT8_MIN, _INT8_MAX = -128, 127

# Whose arithmetic `Int8Model` reproduces. "xnnpack" changes CONV_2D, DEPTHWISE_CONV_2D,
# FULLY_CONNECTED and MEAN to XNNPACK's float32 requantization; every other op is computed
# as the reference kernels compute it (SOFTMAX as the builtin kernel, in both).
KERNELS = ("reference", "xnnpack")


class UnsupportedOpError(ValueError):
    """The .tflite has an op (or an op form) that `Int8Model` cannot evaluate."""


# ---- TFLite's fixed-point helpers (formulas of its quantization utilities) ----

def _round_half_away(value: float) -> int:
    """std::round: halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def quantize_multiplier(real_multiplier: float) -> tuple:
    """(mantissa, shift) with real_multiplier ~= mantissa * 2^(shift - 31), as TFLite's QuantizeMultiplier.

    Example:
      >>> quantize_multiplier(0.5)
      (1073741824, 0)
    """
    if real_multiplier == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real_multiplier)
    mantissa = _round_half_away(fraction * (1 << 31))
    if mantissa == 1 << 31:
        mantissa //= 2
        shift += 1
    if shift < -31:  # flushed to zero, as TFLite does
        return 0, 0
    return mantissa, shift


def _round_half_away_array(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _wrap_int32(x):
    return tf.bitwise.bitwise_and(x + (1 << 31), (1 << 32) - 1) - (1 << 31)


def multiply_by_quantized_multiplier(x, mantissa, shift):
    """x * mantissa * 2^(shift - 31) with the reference kernels' two roundings, on int64 tensors.

    `x` holds int32 values; `mantissa` and `shift` are numbers or numpy arrays
    that broadcast against `x` (per channel: along its last axis).

    Example:
      >>> multiply_by_quantized_multiplier(tf.constant([5, -5], tf.int64), *quantize_multiplier(0.5))
      <tf.Tensor: ... numpy=array([ 3, -3])>
    """
    mantissa = np.asarray(mantissa, np.int64)
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    if np.any(left):
        x = _wrap_int32(x * tf.constant(np.left_shift(np.int64(1), left), tf.int64))
    # SaturatingRoundingDoublingHighMul (mantissa >= 0, so it never saturates) rounds
    # |x| * m / 2^31 half up for x >= 0 and half toward zero for x < 0; RoundingDivideByPOT
    # then rounds half away from zero. On |x| both are floors, and nested floor divisions
    # are one: |y| = (|x| * m + 2^30 - [x < 0] + [right > 0] * 2^(30 + right)) >> (31 + right),
    # y = sign(x) * |y|. One multiply and one shift instead of the two steps' dozen ops.
    negative = tf.cast(x < 0, tf.int64)
    rounding = np.int64(1 << 30) + np.where(right > 0, np.left_shift(np.int64(1), 30 + right), 0)
    magnitude = tf.abs(x) * tf.constant(mantissa, tf.int64) + tf.constant(rounding, tf.int64)
    magnitude = tf.bitwise.right_shift(magnitude - negative, tf.constant(31 + right, tf.int64)
                                       + tf.zeros_like(magnitude))
    return magnitude - 2 * negative * magnitude


def multiply_by_quantized_multiplier_single_rounding(x, mantissa, shift):
    """x * mantissa * 2^(shift - 31) rounded once (halves up), on int64 tensors.

    LiteRT's reference FULLY_CONNECTED for int8 rounds this way (measured: the
    double rounding of `multiply_by_quantized_multiplier` differs on exact halves
    of the second step).

    Example:
      >>> multiply_by_quantized_multiplier_single_rounding(tf.constant([5], tf.int64), 1 << 30, 0)
      <tf.Tensor: ... numpy=array([3])>
    """
    mantissa = np.asarray(mantissa, np.int64)
    total_shift = 31 - np.asarray(shift, np.int64)
    rounding = np.left_shift(np.int64(1), total_shift - 1)
    product = x * tf.constant(mantissa, tf.int64) + tf.constant(rounding, tf.int64)
    return tf.bitwise.right_shift(product, tf.constant(total_shift, tf.int64) + tf.zeros_like(product))


def _activation_range(op, tensor) -> tuple:
    """The int8 clamp of the op's fused activation (CalculateActivationRangeQuantized)."""
    activation = op.options.get("fused_activation_function", "NONE")
    scale, zero_point = np.float32(tensor.scale), tensor.zero_point

    def at(value):
        return zero_point + _round_half_away(float(np.float32(value) / scale))

    if activation == "NONE":
        return _INT8_MIN, _INT8_MAX
    if activation == "RELU":
        return max(_INT8_MIN, at(0.0)), _INT8_MAX
    if activation == "RELU6":
        return max(_INT8_MIN, at(0.0)), min(_INT8_MAX, at(6.0))
    if activation == "RELU_N1_TO_1":
        return max(_INT8_MIN, at(-1.0)), min(_INT8_MAX, at(1.0))
    raise UnsupportedOpError(f"op {op.index} {op.name}: fused activation {activation} is not "
                             "supported by evaluate_int8.")


def _clamp(x, low=_INT8_MIN, high=_INT8_MAX):
    return tf.clip_by_value(x, tf.constant(low, tf.int64), tf.constant(high, tf.int64))


# ---- op builders: each checks the op and returns fn(inputs, batch) -> output ----

class _Context:
    def __init__(self, model, exact_float, kernels):
        self.model = model
        self.exact_float = exact_float  # "float32 when exact" or always float64
        self.kernels = kernels

    def constant(self, tensor):
        return self.model.constants.get(tensor.index)

    def fail(self, op, reason):
        raise UnsupportedOpError(f"op {op.index} {op.name}: {reason}")

    def float_dtype(self, bound):
        """float32 if every partial sum stays below 2^24 (exact), else float64."""
        return tf.float32 if self.exact_float == "float32" and bound < 2 ** 24 else tf.float64


def _requires_int8(ctx, op, tensors):
    for t in tensors:
        if t.dtype != "int8" or t.scales.size != 1:
            ctx.fail(op, f"tensor '{t.name}' is {t.dtype} with {t.scales.size} scales; "
                         "evaluate_int8 takes int8 tensors with one scale here.")


def _same_quantization(ctx, op, a, b):
    if a.scale != b.scale or a.zero_point != b.zero_point:
        ctx.fail(op, f"tensors '{a.name}' and '{b.name}' have different quantization; this op "
                     "form (a requantizing copy) is not supported by evaluate_int8.")


def _conv_multipliers(x, w, out):
    """Per-channel (mantissa, shift) of a conv: double(in) * double(w_c) / double(out)."""
    pairs = [quantize_multiplier(float(x.scale) * float(s) / float(out.scale)) for s in w.scales]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _bias(ctx, op, num_channels):
    if len(op.inputs) < 3:
        return None
    bias = ctx.constant(op.inputs[2])
    if bias is None or op.inputs[2].dtype != "int32":
        ctx.fail(op, "the bias is not a constant int32 tensor.")
    return tf.constant(np.broadcast_to(bias.astype(np.int64), (num_channels,)))


def _weights(ctx, op):
    w_t = op.inputs[1]
    w = ctx.constant(w_t)
    if w is None or w_t.dtype != "int8":
        ctx.fail(op, "the weights are not a constant int8 tensor.")
    if np.any(w_t.zero_points != 0):
        ctx.fail(op, "the weights have a nonzero zero point.")
    return w_t, w.astype(np.int64)


def _conv_requantizer(ctx, x_t, w_t, out, single_rounding=False):
    """acc (int64, bias added) -> int64 output before the clamp, as the chosen kernels do it.

    "reference": TFLite's fixed-point multiplier (double rounding; FULLY_CONNECTED once).
    "xnnpack": XNNPACK's fp32 requantization: float32(acc) * float32 scale (the scale as
    float32 (input scale * weight scale) / output scale), rounded half to even.
    """
    if ctx.kernels == "xnnpack":
        scales = (np.float32(x_t.scale) * w_t.scales.astype(np.float32)) / np.float32(out.scale)
        scales = tf.constant(scales.astype(np.float32))

        def xnnpack(acc):
            scaled = tf.clip_by_value(tf.cast(acc, tf.float32) * scales,
                                      float(_INT8_MIN - out.zero_point), float(_INT8_MAX - out.zero_point))
            return tf.cast(tf.round(scaled), tf.int64) + out.zero_point
        return xnnpack
    if w_t.per_axis or not single_rounding:
        mantissa, shift = _conv_multipliers(x_t, w_t, out)
    else:
        mantissa, shift = quantize_multiplier(x_t.scale * w_t.scale / out.scale)
    multiply = (multiply_by_quantized_multiplier_single_rounding if single_rounding
                else multiply_by_quantized_multiplier)
    return lambda acc: multiply(acc, mantissa, shift) + out.zero_point


def _conv_2d(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    w_t, w = _weights(ctx, op)  # [out, kh, kw, in / groups]
    groups = x_t.shape[3] // w.shape[3]
    if x_t.shape[3] % w.shape[3] or w.shape[0] % groups:
        ctx.fail(op, f"filter depth {w.shape[3]} and {w.shape[0]} filters do not fit input "
                     f"depth {x_t.shape[3]} as a grouped convolution.")
    o = op.options
    dtype = ctx.float_dtype(255 * 128 * w.shape[1] * w.shape[2] * w.shape[3])
    kernel = tf.constant(w.transpose(1, 2, 3, 0), dtype)
    requantize = _conv_requantizer(ctx, x_t, w_t, out)
    bias = _bias(ctx, op, w.shape[0])
    low, high = _activation_range(op, out)
    strides = (1, o["stride_h"], o["stride_w"], 1)
    dilations = (1, o["dilation_h_factor"], o["dilation_w_factor"], 1)

    def run(inputs, batch):
        x = tf.cast(inputs[0] - x_t.zero_point, dtype)
        if groups == 1:
            acc = tf.nn.conv2d(x, kernel, strides, o["padding"], dilations=dilations)
        else:
            # A grouped CONV_2D: output channel block g reads input channel block g. Each
            # group's sums are exact in `dtype`, so group by group is bit-exact.
            acc = tf.concat([tf.nn.conv2d(part, w_g, strides, o["padding"], dilations=dilations)
                             for part, w_g in zip(tf.split(x, groups, axis=-1),
                                                  tf.split(kernel, groups, axis=-1))], axis=-1)
        acc = tf.cast(tf.round(acc), tf.int64)
        return _clamp(requantize(acc if bias is None else acc + bias), low, high)
    return run


def _depthwise_conv_2d(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    w_t, w = _weights(ctx, op)  # [1, kh, kw, in * multiplier]
    channels = x_t.shape[3]
    if w.shape[0] != 1 or w.shape[3] % channels:
        ctx.fail(op, f"filter shape {w.shape} does not fit input depth {channels}.")
    o = op.options
    dtype = ctx.float_dtype(255 * 128 * w.shape[1] * w.shape[2])
    kernel = tf.constant(w.reshape(w.shape[1], w.shape[2], channels, w.shape[3] // channels), dtype)
    requantize = _conv_requantizer(ctx, x_t, w_t, out)
    bias = _bias(ctx, op, w.shape[3])
    low, high = _activation_range(op, out)
    strides = (1, o["stride_h"], o["stride_w"], 1)
    dilations = (o["dilation_h_factor"], o["dilation_w_factor"])
    if dilations != (1, 1) and strides != (1, 1, 1, 1):
        ctx.fail(op, "a dilated depthwise convolution with strides is not supported.")

    def run(inputs, batch):
        x = tf.cast(inputs[0] - x_t.zero_point, dtype)
        acc = tf.nn.depthwise_conv2d(x, kernel, strides, o["padding"], dilations=dilations)
        acc = tf.cast(tf.round(acc), tf.int64)
        return _clamp(requantize(acc if bias is None else acc + bias), low, high)
    return run


def _fully_connected(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    w_t, w = _weights(ctx, op)  # [out, in]
    if w.ndim != 2 or w.shape[1] != x_t.shape[-1]:
        ctx.fail(op, f"weights of shape {w.shape} do not fit input shape {x_t.shape}.")
    requantize = _conv_requantizer(ctx, x_t, w_t, out, single_rounding=True)
    dtype = ctx.float_dtype(255 * 128 * w.shape[1])
    kernel = tf.constant(w.T, dtype)
    bias = _bias(ctx, op, w.shape[0])
    low, high = _activation_range(op, out)
    keep_num_dims = bool(op.options.get("keep_num_dims"))

    def run(inputs, batch):
        x = tf.reshape(tf.cast(inputs[0] - x_t.zero_point, dtype), (-1, w.shape[1]))
        acc = tf.cast(tf.round(tf.matmul(x, kernel)), tf.int64)
        y = _clamp(requantize(acc if bias is None else acc + bias), low, high)
        if keep_num_dims:
            return tf.reshape(y, tf.concat([tf.shape(inputs[0])[:-1], [w.shape[0]]], 0))
        return y
    return run


def _batch_matmul(ctx, op):
    a_t, b_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
    _requires_int8(ctx, op, [a_t, b_t, out])
    mantissa, shift = quantize_multiplier(
        float(np.float32(a_t.scale) * np.float32(b_t.scale)) / float(out.scale))
    depth = a_t.shape[-2] if op.options.get("adj_x") else a_t.shape[-1]
    dtype = ctx.float_dtype(255 * 255 * depth)
    if ctx.constant(a_t) is not None:
        ctx.fail(op, "a constant left operand is not supported.")
    # A constant right operand (EinsumDense with a weight per position) broadcasts over the
    # batch when it has fewer axes than the left one, or a leading 1.
    if ctx.constant(b_t) is not None and not (len(b_t.shape) < len(a_t.shape) or b_t.shape[0] == 1):
        ctx.fail(op, f"a constant right operand of shape {tuple(b_t.shape)} does not broadcast "
                     "over the batch axis.")

    def run(inputs, batch):
        a, b = (tf.cast(x - t.zero_point, dtype) for x, t in zip(inputs, (a_t, b_t)))
        acc = tf.matmul(a, b, adjoint_a=bool(op.options.get("adj_x")),
                        adjoint_b=bool(op.options.get("adj_y")))
        acc = tf.cast(tf.round(acc), tf.int64)
        return _clamp(multiply_by_quantized_multiplier(acc, mantissa, shift) + out.zero_point)
    return run


def _add_or_sub(ctx, op):
    a_t, b_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
    _requires_int8(ctx, op, [a_t, b_t, out])
    left_shift = 20
    if op.name == "ADD":  # add.cc: the ratios in double
        twice_max = 2.0 * max(a_t.scale, b_t.scale)
        real = (a_t.scale / twice_max, b_t.scale / twice_max,
                twice_max / ((1 << left_shift) * out.scale))
    else:  # sub.cc: the ratios in float32
        twice_max = np.float32(2) * max(np.float32(a_t.scale), np.float32(b_t.scale))
        real = (float(np.float32(a_t.scale) / twice_max), float(np.float32(b_t.scale) / twice_max),
                float(twice_max / (np.float32(1 << left_shift) * np.float32(out.scale))))
    (m_a, s_a), (m_b, s_b), (m_out, s_out) = (quantize_multiplier(r) for r in real)
    low, high = _activation_range(op, out)
    sign = 1 if op.name == "ADD" else -1

    def run(inputs, batch):
        a = multiply_by_quantized_multiplier((inputs[0] - a_t.zero_point) * (1 << left_shift), m_a, s_a)
        b = multiply_by_quantized_multiplier((inputs[1] - b_t.zero_point) * (1 << left_shift), m_b, s_b)
        y = multiply_by_quantized_multiplier(a + sign * b, m_out, s_out) + out.zero_point
        return _clamp(y, low, high)
    return run


def _mul(ctx, op):
    a_t, b_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
    _requires_int8(ctx, op, [a_t, b_t, out])
    mantissa, shift = quantize_multiplier(a_t.scale * b_t.scale / out.scale)
    low, high = _activation_range(op, out)

    def run(inputs, batch):
        product = (inputs[0] - a_t.zero_point) * (inputs[1] - b_t.zero_point)
        return _clamp(multiply_by_quantized_multiplier(product, mantissa, shift) + out.zero_point,
                      low, high)
    return run


def _pool_geometry(op):
    o = op.options
    return (1, o["filter_height"], o["filter_width"], 1), (1, o["stride_h"], o["stride_w"], 1), o["padding"]


def _max_pool_2d(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    _same_quantization(ctx, op, x_t, out)
    window, strides, padding = _pool_geometry(op)
    low, high = _activation_range(op, out)

    def run(inputs, batch):
        y = tf.nn.max_pool2d(tf.cast(inputs[0], tf.float32), window, strides, padding)
        return _clamp(tf.cast(y, tf.int64), low, high)
    return run


def _average_pool_2d(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    _same_quantization(ctx, op, x_t, out)
    window, strides, padding = _pool_geometry(op)
    channels = x_t.shape[3]
    ones = tf.ones((window[1], window[2], channels, 1), tf.float32)
    # The number of input values inside each window (padding excluded), as TFLite counts them.
    count = tf.nn.depthwise_conv2d(tf.ones((1, x_t.shape[1], x_t.shape[2], 1)),
                                   tf.ones((window[1], window[2], 1, 1)), strides, padding)
    count = tf.constant(np.rint(count.numpy()).astype(np.int64))
    low, high = _activation_range(op, out)

    def run(inputs, batch):
        total = tf.nn.depthwise_conv2d(tf.cast(inputs[0], tf.float32), ones, strides, padding)
        total = tf.cast(tf.round(total), tf.int64)
        half = count // 2
        y = tf.where(total > 0, tf.truncatediv(total + half, count),
                     tf.truncatediv(total - half, count))
        return _clamp(y, low, high)
    return run


def _axes(ctx, op, tensor, rank):
    axes = ctx.constant(tensor)
    if axes is None:
        ctx.fail(op, "the axes are not constant.")
    axes = sorted({int(a) % rank for a in np.asarray(axes).reshape(-1)})
    if 0 in axes:
        ctx.fail(op, "reducing over the batch axis is not supported.")
    return axes


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple:
    """(mantissa, shift) of an int8 MEAN of `count` values on the reference kernels.

    QuantizedMeanOrSum, which they use for every int8 mean (equal scales and keep_dims
    included), folds 1/count into in_scale / out_scale's multiplier by an integer division.
    A negative shift is a rounding right shift after the rounding high multiply: the
    intermediate is rounded to 2^shift output LSB, so about 2^(shift - 1) of the outputs
    differ by 1 LSB from one exact rounding (docs/design.md, "Fidelity on deep nets").

    Example:
      >>> mean_multiplier(0.1, 0.01, 32)  # 0.3125 = 0.625 * 2^-1: one right shift
      (1342177280, -1)
    """
    mantissa, shift = quantize_multiplier(in_scale / out_scale)
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    return (mantissa << extra) // count, shift - extra


def _mean(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    rank = len(x_t.shape)
    axes = _axes(ctx, op, op.inputs[1], rank)
    keep_dims = bool(op.options.get("keep_dims"))
    count = int(np.prod([x_t.shape[a] for a in axes]))
    if ctx.kernels == "xnnpack":  # float32 scale for the sum, rounded half to even
        scale = np.float32(x_t.scale) / (np.float32(out.scale) * np.float32(count))

        def run(inputs, batch):
            acc = tf.reduce_sum(inputs[0], axis=axes, keepdims=keep_dims) - x_t.zero_point * count
            scaled = tf.round(tf.cast(acc, tf.float32) * scale)
            return _clamp(tf.cast(scaled, tf.int64) + out.zero_point)
    else:
        mean_mantissa, mean_shift = mean_multiplier(x_t.scale, out.scale, count)

        def run(inputs, batch):
            acc = tf.reduce_sum(inputs[0], axis=axes, keepdims=keep_dims) - x_t.zero_point * count
            acc = multiply_by_quantized_multiplier(acc, mean_mantissa, mean_shift)
            return _clamp(acc + out.zero_point)
    return run


def _batched_shape(shape, batch):
    """A file shape [n, ...] at run time: [n * batch, ...]; a -1 (the converter's dynamic
    batch) is left to tf.reshape."""
    shape = [int(d) for d in shape]
    if -1 in shape:
        return tf.constant(shape, tf.int32)
    return tf.concat([[batch * shape[0]], tf.constant(shape[1:], tf.int32)], 0)


def _reshape(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    if x_t.dtype == "int8":
        _same_quantization(ctx, op, x_t, out)
    shape = ctx.constant(op.inputs[1]) if len(op.inputs) > 1 else None
    if op.name == "RESHAPE" and shape is None and len(op.inputs) > 1:
        def run(inputs, batch):  # a shape computed in the graph (SHAPE, STRIDED_SLICE, PACK)
            return tf.reshape(inputs[0], tf.cast(inputs[1], tf.int32))
    elif op.name == "RESHAPE":
        shape = op.options.get("new_shape") if shape is None else shape.reshape(-1)
        if shape is None or len(shape) == 0:
            ctx.fail(op, "the new shape is not constant, or has no batch axis.")

        def run(inputs, batch):
            return tf.reshape(inputs[0], _batched_shape(shape, batch))
    elif op.name == "SQUEEZE":
        axes = op.options.get("squeeze_dims") or [
            a for a, d in enumerate(x_t.shape) if d == 1 and a > 0]
        axes = [int(a) % len(x_t.shape) for a in axes]
        if 0 in axes:
            ctx.fail(op, "squeezing the batch axis is not supported.")

        def run(inputs, batch):
            return tf.squeeze(inputs[0], axes)
    else:  # EXPAND_DIMS
        if shape is None:
            ctx.fail(op, "the axis is not constant.")
        axis = int(np.asarray(shape).reshape(-1)[0]) % (len(x_t.shape) + 1)
        if axis == 0:
            ctx.fail(op, "a new axis before the batch axis is not supported.")

        def run(inputs, batch):
            return tf.expand_dims(inputs[0], axis)
    return run


def _shape(ctx, op):
    if op.outputs[0].dtype != "int32":
        ctx.fail(op, f"output type {op.outputs[0].dtype} is not supported (int32 only).")

    def run(inputs, batch):
        return tf.cast(tf.shape(inputs[0]), tf.int64)
    return run


def _is_data(tensor):
    """An int8 activation (batch axis first), not a small int32 shape vector."""
    return tensor.dtype == "int8"


def _strided_slice(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    begin, end, strides = (ctx.constant(t) for t in op.inputs[1:4])
    if begin is None or end is None or strides is None:
        ctx.fail(op, "only constant begin, end and strides are supported.")
    o = op.options
    masks = {key: int(o.get(key, 0)) for key in (
        "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    if o.get("offset"):
        ctx.fail(op, "offset=True is not supported.")
    if _is_data(x_t):
        _same_quantization(ctx, op, x_t, out)
        keeps_batch = (masks["begin_mask"] & 1 and masks["end_mask"] & 1 and int(strides[0]) == 1
                       and not masks["ellipsis_mask"] and not masks["new_axis_mask"]
                       and not masks["shrink_axis_mask"] & 1)
        if not keeps_batch:
            ctx.fail(op, "slicing the batch axis is not supported.")
    begin, end, strides = (tf.constant(np.asarray(v).reshape(-1).astype(np.int64))
                           for v in (begin, end, strides))

    def run(inputs, batch):
        return tf.strided_slice(inputs[0], begin, end, strides, **masks)
    return run


def _pack(ctx, op):
    out = op.outputs[0]
    axis = int(op.options.get("axis", 0))
    if any(_is_data(t) for t in op.inputs):
        _requires_int8(ctx, op, [*op.inputs, out])
        for t in op.inputs:
            _same_quantization(ctx, op, t, out)
        if axis % len(out.shape) == 0:
            ctx.fail(op, "packing along the batch axis is not supported.")

    def run(inputs, batch):
        return tf.stack(inputs, axis)
    return run


def _transpose(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    perm = ctx.constant(op.inputs[1])
    if perm is None or int(perm[0]) != 0:
        ctx.fail(op, "only a constant permutation that keeps the batch axis first is supported.")
    perm = [int(p) for p in perm]

    def run(inputs, batch):
        return tf.transpose(inputs[0], perm)
    return run


def _concatenation(ctx, op):
    out = op.outputs[0]
    _requires_int8(ctx, op, [*op.inputs, out])
    for t in op.inputs:
        _same_quantization(ctx, op, t, out)
    axis = int(op.options.get("axis", 0)) % len(out.shape)
    if axis == 0:
        ctx.fail(op, "concatenation along the batch axis is not supported.")
    low, high = _activation_range(op, out)

    def run(inputs, batch):
        return _clamp(tf.concat(inputs, axis), low, high)
    return run


def _pad(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    _same_quantization(ctx, op, x_t, out)
    paddings = ctx.constant(op.inputs[1])
    if paddings is None or np.any(paddings[0] != 0):
        ctx.fail(op, "only constant paddings that leave the batch axis alone are supported.")
    value = out.zero_point
    if op.name == "PADV2" and len(op.inputs) > 2:
        value = ctx.constant(op.inputs[2])
        if value is None:
            ctx.fail(op, "the pad value is not constant.")
        value = int(np.asarray(value).reshape(-1)[0])
    paddings = paddings.astype(np.int64)

    def run(inputs, batch):
        return tf.pad(inputs[0], paddings, constant_values=tf.constant(value, tf.int64))
    return run


def _quantize(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    if out.dtype != "int8" or out.scales.size != 1:
        ctx.fail(op, f"output '{out.name}' is {out.dtype}; only int8 outputs are supported.")
    if x_t.dtype == "int8":  # a requantize
        mantissa, shift = quantize_multiplier(x_t.scale / out.scale)

        def run(inputs, batch):
            y = multiply_by_quantized_multiplier(inputs[0] - x_t.zero_point, mantissa, shift)
            return _clamp(y + out.zero_point)
        return run
    if x_t.dtype != "float32":
        ctx.fail(op, f"input '{x_t.name}' is {x_t.dtype}.")
    scale = np.float32(out.scale)

    def run(inputs, batch):  # AffineQuantize: round(x / scale) in float32, halves away from 0
        q = tf.cast(tf.round(inputs[0] / scale), tf.int64)
        return _clamp(q + out.zero_point)
    return run


def _dequantize(ctx, op):
    x_t = op.inputs[0]
    _requires_int8(ctx, op, [x_t])

    def run(inputs, batch):
        return tf.cast(inputs[0] - x_t.zero_point, tf.float32) * np.float32(x_t.scale)
    return run


def _maximum_or_minimum(ctx, op):
    a_t, b_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
    _requires_int8(ctx, op, [a_t, b_t, out])
    _same_quantization(ctx, op, a_t, out)
    _same_quantization(ctx, op, b_t, out)
    combine = tf.maximum if op.name == "MAXIMUM" else tf.minimum

    def run(inputs, batch):
        return combine(inputs[0], inputs[1])
    return run


def _relu(ctx, op):
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    # ReluX in the builtin kernels: requantize (x - zp) to the output, then clamp.
    mantissa, shift = quantize_multiplier(x_t.scale / out.scale)
    low, high = _activation_range(
        dataclasses.replace(op, options={"fused_activation_function": op.name}), out)

    def run(inputs, batch):
        y = multiply_by_quantized_multiplier(inputs[0] - x_t.zero_point, mantissa, shift)
        return _clamp(y + out.zero_point, low, high)
    return run


def _gather(ctx, op):
    table_t, index_t, out = op.inputs[0], op.inputs[1], op.outputs[0]
    table = ctx.constant(table_t)
    if table is None or int(op.options.get("axis", 0)) != 0 or op.options.get("batch_dims", 0):
        ctx.fail(op, "only a gather from a constant table along its axis 0 is supported.")
    table = tf.constant(table.astype(np.int64))

    def run(inputs, batch):
        return tf.gather(table, inputs[1])
    return run


def _not_equal(ctx, op):
    # An int32 (or bool) mask compared with a constant: a bool. int8 operands would need equal
    # quantization to compare raw values; tfqat's graphs compare int32 masks only.
    a_t, b_t = op.inputs[0], op.inputs[1]
    for t in (a_t, b_t):
        if t.dtype not in ("int32", "bool"):
            ctx.fail(op, f"tensor '{t.name}' is {t.dtype}; evaluate_int8 compares int32 or "
                         "bool tensors only.")

    def run(inputs, batch):
        return tf.not_equal(inputs[0], inputs[1])
    return run


def _select_v2(ctx, op):
    # SELECT_V2's int8 kernel copies raw values: both branches at the output's quantization.
    cond_t, a_t, b_t, out = op.inputs[0], op.inputs[1], op.inputs[2], op.outputs[0]
    if cond_t.dtype != "bool":
        ctx.fail(op, f"condition '{cond_t.name}' is {cond_t.dtype}, not bool.")
    _requires_int8(ctx, op, [a_t, b_t, out])
    _same_quantization(ctx, op, a_t, out)
    _same_quantization(ctx, op, b_t, out)

    def run(inputs, batch):  # broadcasts as SELECT_V2 does
        return tf.where(inputs[0], inputs[1], inputs[2])
    return run


def _lookup_table(function):
    def build(ctx, op):
        x_t, out = op.inputs[0], op.outputs[0]
        _requires_int8(ctx, op, [x_t, out])
        values = np.arange(_INT8_MIN, _INT8_MAX + 1, dtype=np.int32)
        real = np.float32(x_t.scale) * (values - x_t.zero_point).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            transformed = function(real, op).astype(np.float32)
            rescaled = _round_half_away_array(transformed / np.float32(out.scale))
        table = tf.constant(np.clip(rescaled + out.zero_point, _INT8_MIN, _INT8_MAX).astype(np.int64))

        def run(inputs, batch):
            return tf.gather(table, inputs[0] - _INT8_MIN)
        return run
    return build


def _gelu(real, op):
    x = real.astype(np.float32)
    if op.options.get("approximate"):
        inner = np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))
    return np.float32(0.5) * x * (np.float32(1) + np.array(
        [math.erf(v / math.sqrt(2)) for v in x.astype(np.float64)], np.float32))


def _rsqrt(real, op):
    with np.errstate(divide="ignore", invalid="ignore"):
        # 1/sqrt(0) = inf saturates at the top of the range, as LiteRT's RSQRT does.
        values = np.float32(1) / np.sqrt(np.maximum(real, np.float32(0)))
    return np.where(np.isfinite(values), values, np.float32(3e38))


def _softmax(ctx, op):
    """LiteRT's int8 softmax: a float32 table of exp(-s * beta * (max - x)), summed in order,
    times 1 / (sum * output scale), rounded half away from zero."""
    x_t, out = op.inputs[0], op.outputs[0]
    _requires_int8(ctx, op, [x_t, out])
    depth = int(x_t.shape[-1])
    if depth > 4096:
        ctx.fail(op, f"a softmax over {depth} values is not supported (at most 4096).")
    scale = np.float32(-np.float32(x_t.scale) * np.float32(op.options.get("beta", 1.0)))
    distances = np.arange(256, dtype=np.float32)  # max - x
    table = tf.constant(np.exp((scale * distances).astype(np.float64)).astype(np.float32))
    out_scale = np.float32(out.scale)

    def run(inputs, batch):
        x = inputs[0]
        exps = tf.gather(table, tf.reduce_max(x, -1, keepdims=True) - x)
        total = exps[..., 0]
        for j in range(1, depth):  # float32 sums in LiteRT's order, so the last bit agrees
            total = total + exps[..., j]
        inverse = tf.constant(np.float32(1)) / (total * out_scale)
        scaled = exps * inverse[..., None]
        rounded = tf.sign(scaled) * tf.floor(tf.abs(scaled) + 0.5)
        return _clamp(tf.cast(rounded, tf.int64) + out.zero_point)
    return run


_BUILDERS = {
    "CONV_2D": _conv_2d, "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected, "BATCH_MATMUL": _batch_matmul,
    "ADD": _add_or_sub, "SUB": _add_or_sub, "MUL": _mul,
    "AVERAGE_POOL_2D": _average_pool_2d, "MAX_POOL_2D": _max_pool_2d, "MEAN": _mean,
    "RESHAPE": _reshape, "SQUEEZE": _reshape, "EXPAND_DIMS": _reshape, "TRANSPOSE": _transpose,
    "CONCATENATION": _concatenation, "PAD": _pad, "PADV2": _pad,
    "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize,
    "MAXIMUM": _maximum_or_minimum, "MINIMUM": _maximum_or_minimum,
    "RELU": _relu, "RELU6": _relu, "GATHER": _gather,
    "SHAPE": _shape, "STRIDED_SLICE": _strided_slice, "PACK": _pack,
    "NOT_EQUAL": _not_equal, "SELECT_V2": _select_v2,
    "LOGISTIC": _lookup_table(lambda x, op: np.float32(1) / (np.float32(1) + np.exp(-x))),
    "TANH": _lookup_table(lambda x, op: np.tanh(x)),
    "GELU": _lookup_table(_gelu),
    "RSQRT": _lookup_table(_rsqrt),
    "SOFTMAX": _softmax,
}
assert set(_BUILDERS) == set(EXACTNESS)


class Int8Model:
    """An integer-only .tflite (bytes or path) as a batched TensorFlow function.

    Construction checks every op and raises `UnsupportedOpError` for the first one
    it cannot evaluate. `run_quantized` takes the model's int8 (or int32) inputs
    and returns its raw outputs; `predict` takes float inputs and quantizes them
    as the .tflite's input tensors say (as `run_tflite` does). `steps` lists
    (OpInfo, fn) in execution order, fn(input tensors as int64, batch) -> output,
    for op-by-op checks. `kernels`: "reference" or "xnnpack" (see `KERNELS`);
    `jit_compile`: compile the graph with XLA (slower on CPU here, measured).

    Example:
      >>> program = Int8Model("model_int8.tflite")
      >>> raw = program.run_quantized([x_int8])  # [int8 array of the first output, ...]
      >>> program.predict(x_test)[0].dequantized.argmax(-1)[:3]
      array([7, 2, 1])
    """

    def __init__(self, tflite, float_precision: str | None = None, jit_compile: bool = False,
                 kernels: str = "reference"):
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}; use one of {', '.join(map(repr, KERNELS))}.")
        if float_precision not in (None, "float32", "float64"):
            raise ValueError(f"float_precision={float_precision!r}; use 'float32', 'float64' or None.")
        self.kernels = kernels
        self.model = read_tflite(tflite)
        if float_precision is None:
            # On GPUs, float32 convolutions may run as TF32, FFT or Winograd (not exact).
            float_precision = "float64" if tf.config.list_logical_devices("GPU") else "float32"
        ctx = _Context(self.model, float_precision, kernels)
        steps = []
        known = {t.index for t in self.model.inputs} | set(self.model.constants)
        for op in self.model.ops:
            builder = _BUILDERS.get(op.name)
            if builder is None:
                raise UnsupportedOpError(
                    f"op {op.index} {op.name} is not supported by evaluate_int8 (supported: "
                    f"{', '.join(sorted(_BUILDERS))}); run the .tflite with "
                    "tfqat.diagnostics.evaluation.run_tflite instead.")
            missing = [t.name for t in op.inputs if t.index not in known]
            if missing:
                raise UnsupportedOpError(f"op {op.index} {op.name} reads {missing}, which no "
                                         "earlier op writes.")
            steps.append((op, builder(ctx, op)))
            known.update(op.output_indices)
        self.steps = steps
        self.ops_used = sorted({op.name for op in self.model.ops})
        specs = [tf.TensorSpec((None, *t.shape[1:]), tf.dtypes.as_dtype(t.dtype))
                 for t in self.model.inputs]
        self._function = tf.function(self._run, input_signature=specs, jit_compile=jit_compile)

    @property
    def exactness(self) -> dict:
        """{op name: how exactly it is reproduced} for the ops of this model (reference kernels)."""
        return {name: EXACTNESS[name] for name in self.ops_used}

    def _run(self, *inputs):
        values = {index: tf.constant(array.astype(np.int64) if array.dtype.kind in "iu" else array)
                  for index, array in self.model.constants.items()}
        batch = tf.shape(inputs[0])[0]
        for tensor, value in zip(self.model.inputs, inputs):
            values[tensor.index] = tf.cast(value, tf.int64) if value.dtype.is_integer else value
        for op, run in self.steps:
            values[op.outputs[0].index] = run([values[t.index] for t in op.inputs], batch)
        return [tf.cast(values[t.index], tf.dtypes.as_dtype(t.dtype)) for t in self.model.outputs]

    def run_quantized(self, inputs) -> list:
        """The raw outputs (numpy, the .tflite's dtypes) for raw inputs (one array per input)."""
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        tensors = [tf.convert_to_tensor(np.asarray(a, t.dtype))
                   for a, t in zip(inputs, self.model.inputs)]
        return [o.numpy() for o in self._function(*tensors)]

    def predict(self, inputs) -> list:
        """TFLiteOutputs (raw and dequantized) per output, for float inputs (one array per input)."""
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        raw = self.run_quantized([quantize(a, t) for a, t in zip(inputs, self.model.inputs)])
        return [_outputs(r, t) for r, t in zip(raw, self.model.outputs)]


def _outputs(raw, tensor) -> TFLiteOutputs:
    if not tensor.is_quantized:
        return TFLiteOutputs(raw, raw.astype(np.float32), 1.0, 0)
    return TFLiteOutputs(raw, dequantize(raw, tensor, np.float32), tensor.scale, tensor.zero_point)


@dataclasses.dataclass(frozen=True, eq=False)
class Int8Evaluation:
    """What `evaluate_int8` returns.

    outputs: TFLiteOutputs (raw int8 and dequantized float32) for a one-output
      model, else a list of them in the Keras model's output order.
    accuracy: top-1 accuracy of the (first) output against `labels`; None without labels.
    exactness: {op name: how exactly evaluate_int8 reproduces it} for the model's ops.
    """

    outputs: object
    accuracy: float | None
    num_examples: int
    exactness: dict


def _split_labels(element, num_inputs):
    """(inputs, labels or None) of one batch element, following model.fit's conventions."""
    if isinstance(element, dict):
        return element, None
    if isinstance(element, (tuple, list)):
        if num_inputs > 1 and len(element) == num_inputs and all(
                isinstance(e, (np.ndarray, tf.Tensor)) for e in element):
            return list(element), None
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def _as_input_list(x, names, what):
    if isinstance(x, dict):
        if sorted(x) != sorted(names):
            raise ValueError(f"evaluate_int8: {what} has keys {sorted(x)}, but the .tflite's "
                             f"inputs are {names}; key the arrays by input name.")
        return [np.asarray(x[n]) for n in names]
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(names):
        raise ValueError(f"evaluate_int8: {what} holds {len(arrays)} input arrays; the .tflite "
                         f"has {len(names)} inputs ({', '.join(names)}).")
    return [np.asarray(a) for a in arrays]


def _batches(program, data, labels, batch_size):
    """Yields ([input arrays], labels or None) batches of `data` (model.fit's `x` conventions)."""
    model = program.model
    names = model.input_names
    is_arrays = isinstance(data, (np.ndarray, tf.Tensor)) or (
        isinstance(data, dict) and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in data.values())
    ) or (isinstance(data, (list, tuple)) and len(names) > 1 and len(data) == len(names)
          and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in data))
    if is_arrays:
        arrays = _as_input_list(data, names, "data")
        for array, tensor in zip(arrays, model.inputs):
            if array.ndim != len(tensor.shape) or tuple(array.shape[1:]) != tensor.shape[1:]:
                raise ValueError(f"evaluate_int8: data has shape {array.shape}; the .tflite's "
                                 f"input '{tensor.name}' takes (N, "
                                 f"{', '.join(map(str, tensor.shape[1:]))}).")
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != len(arrays[0]):
                raise ValueError(f"evaluate_int8: {len(labels)} labels for {len(arrays[0])} "
                                 "examples.")
        for start in range(0, len(arrays[0]), batch_size):
            yield ([a[start:start + batch_size] for a in arrays],
                   None if labels is None else labels[start:start + batch_size])
        return
    if labels is not None:
        raise ValueError("evaluate_int8: pass labels only with array data; a dataset brings its "
                         "own (x, y) batches.")
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    elif not hasattr(data, "__iter__") or isinstance(data, (str, bytes)):
        raise TypeError(f"evaluate_int8: data of type {type(data).__name__} is not supported; pass "
                        "a numpy array (a list or dict of them for several inputs), or an "
                        "iterable / tf.data.Dataset of input or (x, y) batches.")
    for index, element in enumerate(data):
        x, y = _split_labels(element, len(names))
        yield _as_input_list(x, names, f"batch {index}"), None if y is None else np.asarray(y)


def evaluate_int8(model, data, labels=None, batch_size: int = 256,
                  float_precision: str | None = None, kernels: str = "reference") -> Int8Evaluation:
    """Evaluates the integer-only .tflite of `model` on `data` with batched TensorFlow integer math.

    `model`: a QAT model (exported with `tfqat.export_tflite` first), or a .tflite
    (bytes or path). `data` follows model.fit's `x`: an array, a list/dict of arrays
    for several inputs, or a tf.data.Dataset / iterable of batches (inputs, or
    (inputs, labels) tuples, whose labels are then used). `labels` (with array data):
    class ids, or one-hot rows. Float inputs are quantized with the .tflite input's
    scale and zero point (halves up, as `run_tflite`). The ops are computed as the
    reference kernels compute them, bit-exactly for most (see `EXACTNESS` and the
    module doc). `kernels="xnnpack"` requantizes CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED as XNNPACK (the default interpreter) does, in float32.
    `float_precision`: "float32" or "float64" for the exact convolutions (default:
    float32 on CPU, float64 on GPU).

    Example:
      >>> result = tfqat.evaluate_int8(qat_model, x_test, labels=y_test, batch_size=512)
      >>> result.accuracy, result.outputs.raw[:2]
      (0.981, array([[-128, ..., 126], [...]], dtype=int8))
      >>> tfqat.evaluate_int8(flatbuffer, tf.data.Dataset.from_tensor_slices((x, y)).batch(64))
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluate_int8: batch_size={batch_size!r} must be a positive integer.")
    if not isinstance(model, (bytes, bytearray, str)) and not hasattr(model, "__fspath__"):
        from tfqat.export.tflite import export_tflite
        model = export_tflite(model)
    program = Int8Model(model, float_precision=float_precision, kernels=kernels)
    raw, correct, labelled, total = [[] for _ in program.model.outputs], 0, 0, 0
    for inputs, y in _batches(program, data, labels, batch_size):
        outputs = program.run_quantized([quantize(a, t) for a, t in zip(inputs, program.model.inputs)])
        for collected, output in zip(raw, outputs):
            collected.append(output)
        total += len(outputs[0])
        if y is not None:
            y = np.asarray(y)
            y = y.argmax(-1) if y.ndim == 2 and y.shape[-1] > 1 else y.reshape(-1)
            if len(y) != len(outputs[0]):
                raise ValueError(f"evaluate_int8: {len(y)} labels for {len(outputs[0])} examples.")
            correct += int(np.sum(outputs[0].reshape(len(y), -1).argmax(-1) == y))
            labelled += len(y)
    if not total:
        raise ValueError("evaluate_int8: data holds no examples.")
    results = [_outputs(np.concatenate(r), t) for r, t in zip(raw, program.model.outputs)]
    return Int8Evaluation(outputs=results[0] if len(results) == 1 else results,
                          accuracy=correct / labelled if labelled else None,
                          num_examples=total, exactness=program.exactness)
