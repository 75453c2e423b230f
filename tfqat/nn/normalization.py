"""LayerNormalization as the int8 ops TFLite runs it.

Checked with TF 2.21's converter (docs/design.md, "Integer-only
transformer ops"): mean -> x - mean -> d * d -> mean -> + eps -> rsqrt -> d * r
[-> * gamma] [-> + beta] is MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (MUL, ADD),
all int8, only when every intermediate tensor has its own fake quant
(`tf.square` has no int8 kernel; d * d does). LayerNormalization(rms_scaling=True)
(deprecated in Keras: it divides x, not x - mean, by the standard deviation)
multiplies x by the rsqrt; RMSNormalization (x * rsqrt(mean(x * x) + eps)) has
no mean and no subtraction. gamma and beta are constant operands: they are fake-quantized
per tensor, symmetric, like weights, so the converter takes those scales.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfqat.nn.composite import CompositeQuantLayer, FiniteRangeQuantizer
from tfqat.nn.quantizers import fake_quant_weights, pass_through_during_delay


@tf.custom_gradient
def _rsqrt_saturating(v):
    """rsqrt(v), inf at 0 (TFLite saturates there), with a zero gradient where v <= 0.

    Training only: the fake quant after it blocks the gradient of a saturated
    value, but rsqrt's own gradient there is inf * 0 = NaN.
    """
    r = tf.math.rsqrt(v)

    def grad(upstream):
        g = upstream * -0.5 * r * r * r
        return tf.where((v > 0) & tf.math.is_finite(g), g, tf.zeros_like(g))

    return r, grad


@keras.saving.register_keras_serializable(package="tfqat")
class QuantLayerNormalization(CompositeQuantLayer):
    """LayerNormalization with a fake quant on each int8 tensor of its TFLite form.

    Args:
      axis: int or list of ints, the normalized axes (as Keras's).
      epsilon, center, scale, rms_scaling: as keras.layers.LayerNormalization.
      rms_normalization: compute keras.layers.RMSNormalization instead (gamma is its scale).
      weight_bits: bits of gamma and beta (per-tensor, symmetric).
      activation_bits, ema_decay, quant_delay: of the inner fake quants.
    The output's fake quant is the rewrite rule's (a tracked ActivationQuantizer after it).

    Example:
      >>> ln = QuantLayerNormalization(axis=-1, name="ln")
      >>> y = ln(tf.random.normal([2, 5, 8]), training=True)
      >>> [q.name for q in ln.inner_quantizers][:3]
      ['ln_mean_fq', 'ln_centered_fq', 'ln_squared_fq']
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 rms_normalization=False, weight_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else [int(axis)]
        self.epsilon = float(epsilon)
        self.rms_scaling = bool(rms_scaling)
        self.rms_normalization = bool(rms_normalization)
        self.scale = bool(scale) or self.rms_scaling or self.rms_normalization
        self.center = bool(center) and not (self.rms_scaling or self.rms_normalization)
        self.weight_bits = int(weight_bits)
        if not self.rms_normalization:
            self._add_inner_quantizer("mean")
            self._add_inner_quantizer("centered")
        for tag in ("squared", "variance", "variance_eps"):
            self._add_inner_quantizer(tag)
        self._add_inner_quantizer("rsqrt", cls=FiniteRangeQuantizer)
        # The last op's output gets the rule's quantizer; the ones before it get inner ones.
        if self.scale:
            self._add_inner_quantizer("normalized")
        if self.scale and self.center:
            self._add_inner_quantizer("scaled")
        elif self.center:
            self._add_inner_quantizer("normalized")

    def build(self, input_shape):
        rank = len(input_shape)
        self.axis = sorted(a % rank for a in self.axis)
        self._reduce_axes = self.axis
        self._build_weights(input_shape, self.axis)

    def _build_weights(self, input_shape, axes):
        """gamma, beta (over `axes` of the input), the step counter and the inner quantizers."""
        rank = len(input_shape)
        shape = tuple(input_shape[a] for a in axes)
        self._broadcast = [input_shape[a] if a in axes else 1 for a in range(1, rank)]
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones") \
            if self.scale else None
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros") \
            if self.center else None
        self.step = self.add_weight(name="step", shape=(), dtype="int64", initializer="zeros",
                                    trainable=False, aggregation="only_first_replica")
        self._build_inner_quantizers()

    def _weight(self, variable, training):
        value = tf.reshape(tf.convert_to_tensor(variable), self._broadcast)
        # Below 8 bits as int8 on the coarser grid: ADD and MUL take no int4 constant (a 4-bit
        # beta failed to convert; found by the graph fuzzer).
        quantize = lambda: fake_quant_weights(value, self.weight_bits, per_channel=False,
                                              container_bits=8)
        if not training:
            return quantize()
        return pass_through_during_delay(self.step.value, self.quant_delay, value, quantize)

    def call(self, inputs, training=None):
        training = bool(training)
        x, axes = self._to_groups(inputs), self._reduce_axes
        inner = lambda tag, compute: self._inner(tag, compute, training)
        if self.rms_normalization:
            centered = x
        else:
            mean = inner("mean", lambda: tf.reduce_mean(x, axes, keepdims=True))
            centered = inner("centered", lambda: x - mean)
        squared = inner("squared", lambda: centered * centered)
        variance = inner("variance", lambda: tf.reduce_mean(squared, axes, keepdims=True))
        shifted = inner("variance_eps", lambda: variance + self.epsilon)
        rsqrt = inner("rsqrt", lambda: _rsqrt_saturating(shifted) if training
                      else tf.math.rsqrt(shifted))
        scaled_input = x if self.rms_scaling or self.rms_normalization else centered
        product = lambda: self._from_groups(scaled_input * rsqrt)
        if self.scale:
            gamma = self._weight(self.gamma, training)
            normalized = inner("normalized", product)
            product = lambda: normalized * gamma
        if self.center:
            outputs = inner("scaled" if self.scale else "normalized", product)
            outputs = outputs + self._weight(self.beta, training)
        else:
            outputs = product()
        if training:
            self.step.assign_add(1)
        return outputs

    def _to_groups(self, x):
        return x  # GroupNormalization normalizes a reshaped view

    def _from_groups(self, x):
        return x

    def load_float_weights(self, layer):
        """Copies gamma and beta from a built LayerNormalization (scale of an RMSNormalization)."""
        if self.gamma is not None:
            self.gamma.assign(layer.scale if self.rms_normalization else layer.gamma)
        if self.beta is not None:
            self.beta.assign(layer.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(axis=list(self.axis), epsilon=self.epsilon, center=self.center,
                      scale=self.scale, rms_scaling=self.rms_scaling,
                      rms_normalization=self.rms_normalization, weight_bits=self.weight_bits)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantGroupNormalization(QuantLayerNormalization):
    """GroupNormalization (channels last) as QuantLayerNormalization's int8 chain on groups.

    The input (batch, ..., C) is viewed as (batch, ..., groups, C / groups) (a RESHAPE,
    which keeps the int8 scale); the MEAN/SUB/MUL/MEAN/ADD/RSQRT/MUL chain normalizes
    over every axis but the batch and the group axis; the result is reshaped back and
    multiplied by gamma, plus beta, per channel (constant operands, per tensor,
    symmetric). Static shapes only, so the .tflite has no SHAPE ops.

    Example:
      >>> gn = QuantGroupNormalization(groups=2, name="gn")
      >>> gn(tf.random.normal([2, 4, 4, 6]), training=True).shape
      TensorShape([2, 4, 4, 6])
    """

    def __init__(self, groups=32, **kwargs):
        kwargs.pop("rms_scaling", None)
        kwargs.pop("rms_normalization", None)
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        rank = len(input_shape)
        self.axis = [rank - 1]
        channels = input_shape[-1]
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"QuantGroupNormalization '{self.name}' needs static input "
                             f"dimensions, got {tuple(input_shape)}.")
        groups = channels if self.groups == -1 else self.groups
        self._group_shape = [-1, *input_shape[1:-1], groups, channels // groups]
        self._out_shape = [-1, *input_shape[1:]]
        # the grouped view has rank + 1 axes; the group axis is rank - 1
        self._reduce_axes = [a for a in range(1, rank + 1) if a != rank - 1]
        self._build_weights(input_shape, self.axis)

    def _to_groups(self, x):
        return tf.reshape(x, self._group_shape)

    def _from_groups(self, x):
        return tf.reshape(x, self._out_shape)

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups)
        for key in ("rms_scaling", "rms_normalization"):
            config.pop(key)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantUnitNormalization(CompositeQuantLayer):
    """UnitNormalization, x * rsqrt(sum(x * x)) over `axis`, as int8 MUL, SUM, RSQRT, MUL.

    Keras caps rsqrt at 1e12 (an all-zero row stays 0); TFLite's int8 RSQRT saturates
    at its range's top instead, and a zero row times anything is 0 either way. The
    output's fake quant is the rule's.

    Example:
      >>> un = QuantUnitNormalization(axis=-1, name="un")
      >>> [q.name for q in un.inner_quantizers]
      ['un_squared_fq', 'un_sum_squares_fq', 'un_rsqrt_fq']
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else [int(axis)]
        self._add_inner_quantizer("squared")
        self._add_inner_quantizer("sum_squares")
        self._add_inner_quantizer("rsqrt", cls=FiniteRangeQuantizer)

    def build(self, input_shape):
        rank = len(input_shape)
        self.axis = sorted(a % rank for a in self.axis)
        self._build_inner_quantizers()

    def call(self, inputs, training=None):
        training = bool(training)
        inner = lambda tag, compute: self._inner(tag, compute, training)
        squared = inner("squared", lambda: inputs * inputs)
        total = inner("sum_squares", lambda: tf.reduce_sum(squared, self.axis, keepdims=True))
        rsqrt = inner("rsqrt", lambda: _rsqrt_saturating(total) if training
                      else tf.math.rsqrt(total))
        return inputs * rsqrt

    def get_config(self):
        config = super().get_config()
        config.update(axis=list(self.axis))
        return config
