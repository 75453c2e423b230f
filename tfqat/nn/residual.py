"""A residual sum with a scaled branch, `shortcut + residual * scale`, as two int8 ops.

Inception-ResNet's blocks end in `x + r * scale` (keras.applications'
CustomScaleLayer, scale 0.1 to 0.2). TFLite has no fused form of it: the
converter makes MUL (by a scalar constant) and then ADD, and the product
between them is an int8 tensor with a scale of its own, so it gets an inner
fake quant. With scale 1 there is no MUL: the layer is a plain ADD.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfqat.nn.composite import CompositeQuantLayer
from tfqat.nn.quantizers import fake_quant_weights


@keras.saving.register_keras_serializable(package="tfqat")
class QuantScaledAdd(CompositeQuantLayer):
    """`inputs[0] + inputs[1] * scale` with a fake quant on the int8 product.

    Args:
      scale: the Python float the second input is multiplied by.
      weight_bits: bits of the constant `scale` (per tensor, symmetric; a single value, so
        it is exact at any width, and the converter stores it with exactly that scale).
      activation_bits, ema_decay, quant_delay: of the inner fake quant of the product.
    The output's fake quant is the rewrite rule's (a tracked ActivationQuantizer after it,
    after a ReLU that TFLite fuses into the ADD).

    Example:
      >>> add = QuantScaledAdd(0.17, name="block35_1")
      >>> y = add([tf.ones([2, 4]), tf.ones([2, 4])], training=True)
      >>> [q.name for q in add.inner_quantizers]
      ['block35_1_scaled_residual_fq']
    """

    def __init__(self, scale, weight_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.weight_bits = int(weight_bits)
        if self.scale != 1.0:
            self._add_inner_quantizer("scaled_residual")

    def build(self, input_shape):
        self._build_inner_quantizers()

    def call(self, inputs, training=None):
        shortcut, residual = inputs
        if self.scale == 1.0:
            return shortcut + residual
        scale = fake_quant_weights(tf.constant(self.scale, tf.float32), self.weight_bits,
                                   per_channel=False)
        scaled = self._inner("scaled_residual", lambda: residual * scale, bool(training))
        return shortcut + scaled

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, weight_bits=self.weight_bits)
        return config
