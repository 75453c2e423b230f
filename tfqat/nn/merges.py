"""Merge layers whose int8 TFLite form is several ops: Average as ADDs then one MUL.

TFLite runs Average(n inputs) as n - 1 binary ADDs and a MUL by 1/n; each sum is an
int8 tensor of its own, so each gets a fake quant (without one, the converter leaves
the sum float). The output's fake quant is the rewrite rule's.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfqat.nn.composite import CompositeQuantLayer


@keras.saving.register_keras_serializable(package="tfqat")
class QuantAverage(CompositeQuantLayer):
    """keras.layers.Average as int8 ADD (one per further input), then MUL by 1 / n.

    The inner quantizers (one per sum) are made when the layer is built, from its number
    of inputs.

    Example:
      >>> avg = QuantAverage(name="avg")
      >>> avg([tf.ones([1, 3]), tf.zeros([1, 3])]).numpy()
      array([[0.5, 0.5, 0.5]], dtype=float32)
      >>> [q.name for q in avg.inner_quantizers]
      ['avg_sum_fq']
    """

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2 or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(f"QuantAverage '{self.name}' needs a list of 2 or more inputs.")
        self.num_inputs = len(input_shape)
        for tag in self._sum_tags():
            self._add_inner_quantizer(tag)
        self._build_inner_quantizers()

    def _sum_tags(self):
        return ["sum" if i == 1 else f"sum_{i}" for i in range(1, self.num_inputs)]

    def call(self, inputs, training=None):
        training = bool(training)
        total = inputs[0]
        for tag, other in zip(self._sum_tags(), inputs[1:]):
            total = self._inner(tag, lambda: total + other, training)
        return total * (1.0 / self.num_inputs)
