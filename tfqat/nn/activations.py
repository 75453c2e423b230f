"""Activations whose int8 TFLite form is several ops.

TF 2.21's converter gives some activations no single int8 kernel; the int8
form is a short chain of integer ops, and every tensor inside the chain is an
int8 tensor that needs its own scale. `QuantActivation` computes exactly that
chain, with a fake quant of fixed range on each inner int8 tensor (the range
is known from the math, so nothing is tracked). The output gets an ordinary
tracked ActivationQuantizer from the rewrite rule.

Checked with the converter (fake quants before and after the activation):
- hard_sigmoid, relu6(x + 3) / 6: ADD and MUL with an unquantized tensor
  between them stay float. With a fake quant on relu6(x + 3), range [0, 6],
  it is ADD (RELU6 fused) -> MUL, both int8.
- silu/swish, x * sigmoid(x): LOGISTIC -> MUL, int8 even without an inner
  fake quant, because LOGISTIC's int8 output scale is fixed (1/256, zero point
  -128); that fixed fake quant on sigmoid(x) makes the QAT model compute what
  the .tflite computes.
- elu: ELU keeps float kernels (DEQUANTIZE -> ELU -> QUANTIZE) whatever the
  fake quants; so does exp(x) - 1 under a where/select. For alpha = 1,
  elu(x) = max(x, exp(min(x, 0)) - 1) (exp(t) - 1 >= t), which becomes
  MINIMUM -> EXP -> SUB -> MAXIMUM, all int8, with a fake quant of range
  [0, 1] on the EXP output.
LeakyReLU (LEAKY_RELU), hard_silu (HARD_SWISH) and gelu (GELU) are single
int8 ops and stay ordinary Keras layers.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfqat.nn.quantizers import FIXED_RANGES, add_step_counter, fake_quant_after_delay

# The fixed range of the fake quant on each decomposition's inner int8 tensor.
INNER_RANGES = {
    "hard_sigmoid": (0.0, 6.0),  # relu6(x + 3)
    "silu": FIXED_RANGES["sigmoid"],  # sigmoid(x), LOGISTIC's fixed output scale
    "elu": (0.0, 1.0),  # exp(min(x, 0))
}
# Inner tensors whose bit width TFLite fixes: LOGISTIC's output is int8 whatever the
# activation bits. The others follow the layer's `bits`.
INNER_BITS = {"silu": 8}


@keras.saving.register_keras_serializable(package="tfqat")
class QuantActivation(keras.layers.Layer):
    """hard_sigmoid, silu or elu (alpha=1) as the int8 ops TFLite runs them.

    Inner fake quants follow quant_delay like every activation quantizer and
    pass through inside `tfqat.bypass_quantizers` (which leaves `step` alone).
    They have `bits` bits, except silu's: LOGISTIC's output is int8 whatever
    the activation bits.

    Example:
      >>> act = QuantActivation("hard_sigmoid")
      >>> act(tf.constant([[-4.0, 0.0, 4.0]])).numpy().round(3)
      array([[0. , 0.5, 1. ]], dtype=float32)
    """

    bypassable = True  # read by tfqat.nn.quantizers.bypass_quantizers

    def __init__(self, kind, bits=8, quant_delay=0, **kwargs):
        super().__init__(**kwargs)
        if kind not in INNER_RANGES:
            raise ValueError(f"Layer '{self.name}': activation {kind!r} has no decomposition; "
                             f"use one of {sorted(INNER_RANGES)}.")
        self.kind = kind
        self.bits = int(bits)
        self.quant_delay = int(quant_delay)
        self._bypassed = False

    def build(self, input_shape):
        self.step = add_step_counter(self)

    def _inner(self, x, training):
        if self._bypassed:
            return x
        lo, hi = INNER_RANGES[self.kind]
        bits = INNER_BITS.get(self.kind, self.bits)
        return fake_quant_after_delay(x, lo, hi, bits, training, self.step, self.quant_delay)

    def call(self, inputs, training=None):
        training = bool(training)
        if self.kind == "hard_sigmoid":
            outputs = self._inner(tf.nn.relu6(inputs + 3.0), training) * (1.0 / 6.0)
        elif self.kind == "silu":
            outputs = inputs * self._inner(tf.sigmoid(inputs), training)
        else:
            outputs = tf.maximum(inputs, self._inner(tf.exp(tf.minimum(inputs, 0.0)), training) - 1.0)
        if training and not self._bypassed:  # bypass_quantizers leaves step counters alone
            self.step.assign_add(1)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, bits=self.bits, quant_delay=self.quant_delay)
        return config


def round_to_int8_weight(values):
    """`values` rounded to the per-tensor symmetric 8-bit grid max|v| / 127, with plain ops.

    Rounds half up, as TF's fake quant does. Used where the converter quantizes a float
    constant itself and leaves the op float when the constant carries a fake quant (PRELU's
    alpha): values already on the grid are quantized exactly as they are.
    """
    scale = tf.maximum(tf.reduce_max(tf.abs(values)), 1e-8) / 127.0
    return tf.floor(values / scale + 0.5) * scale


@keras.saving.register_keras_serializable(package="tfqat")
class QuantPReLU(keras.layers.Layer):
    """PReLU (x for x >= 0, alpha * x below) with alpha quantized as TFLite's int8 PRELU holds it.

    Checked with TF 2.21's converter: Keras's form relu(x) - alpha * relu(-x) becomes one
    PRELU, integer-only when alpha is a float constant; the converter quantizes alpha per
    tensor, symmetric (scale max|alpha| / 127, zero point 0), whatever its shape (shared
    axes or not). A FakeQuant on alpha (per tensor or per channel) leaves PRELU in float. So
    alpha is rounded to that grid with plain ops, which the converter folds into a constant
    already on its grid, and in training with a straight-through gradient. Always 8 bits:
    the converter picks alpha's bits. The output's fake quant is the rule's.

    Example:
      >>> prelu = QuantPReLU(shared_axes=[1, 2])
      >>> prelu(tf.constant([[[[-2.0, 3.0]]]])).shape
      TensorShape([1, 1, 1, 2])
    """

    def __init__(self, shared_axes=None, quant_delay=0, alpha_regularizer=None,
                 alpha_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)
        if shared_axes is not None and not isinstance(shared_axes, (list, tuple)):
            shared_axes = [shared_axes]
        self.shared_axes = None if shared_axes is None else [int(a) for a in shared_axes]
        self.quant_delay = int(quant_delay)

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for axis in self.shared_axes or ():
            shape[axis - 1] = 1
        self.alpha = self.add_weight(name="alpha", shape=tuple(shape), initializer="zeros",
                                     regularizer=self.alpha_regularizer,
                                     constraint=self.alpha_constraint)
        self.step = add_step_counter(self)

    def quantized_alpha(self, training=False):
        alpha = tf.convert_to_tensor(self.alpha)
        rounded = lambda: alpha + tf.stop_gradient(round_to_int8_weight(alpha) - alpha)
        if not training or not self.quant_delay:
            return rounded()
        return tf.cond(self.step.value < self.quant_delay, lambda: tf.identity(alpha), rounded)

    def call(self, inputs, training=None):
        training = bool(training)
        alpha = self.quantized_alpha(training)
        # The pattern the converter turns into PRELU: relu(x) + (-alpha) * relu(-x).
        outputs = tf.nn.relu(inputs) + (-alpha) * tf.nn.relu(-inputs)
        if training:
            self.step.assign_add(1)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(shared_axes=self.shared_axes, quant_delay=self.quant_delay,
                      alpha_regularizer=keras.regularizers.serialize(self.alpha_regularizer),
                      alpha_constraint=keras.constraints.serialize(self.alpha_constraint))
        return config
