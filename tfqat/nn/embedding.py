"""Embedding as TFLite's int8 GATHER.

The table is fake-quantized per tensor, symmetric (the int8 constant GATHER
reads), and the gathered rows keep its scale: GATHER computes nothing, so no
fake quant follows it. Token ids stay int32.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfqat.nn.quantizers import fake_quant_weights, pass_through_during_delay


@keras.saving.register_keras_serializable(package="tfqat")
class QuantEmbedding(keras.layers.Layer):
    """keras.layers.Embedding with an int8 table (per-tensor, symmetric, narrow range).

    Example:
      >>> emb = QuantEmbedding(100, 8, name="tokens")
      >>> emb(tf.constant([[1, 2, 3]])).shape
      TensorShape([1, 3, 8])
    """

    def __init__(self, input_dim, output_dim, weight_bits=8, quant_delay=0, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.weight_bits = int(weight_bits)
        self.quant_delay = int(quant_delay)

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings",
                                          shape=(self.input_dim, self.output_dim),
                                          initializer="uniform")
        self.step = self.add_weight(name="step", shape=(), dtype="int64", initializer="zeros",
                                    trainable=False, aggregation="only_first_replica")

    def quantized_table(self, training=False):
        """The table as the .tflite holds it, in float."""
        table = tf.convert_to_tensor(self.embeddings)
        # Below 8 bits the values go to the converter as int8 on the coarser grid: GATHER has
        # no int4 table (the converter fails on it; found by the graph fuzzer).
        quantize = lambda: fake_quant_weights(table, self.weight_bits, per_channel=False,
                                              container_bits=8)
        if not training:
            return quantize()
        return pass_through_during_delay(self.step.value, self.quant_delay, table, quantize)

    def call(self, inputs, training=None):
        training = bool(training)
        outputs = tf.gather(self.quantized_table(training), tf.cast(inputs, tf.int32))
        if training:
            self.step.assign_add(1)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      weight_bits=self.weight_bits, quant_delay=self.quant_delay)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class PositionEmbedding(keras.layers.Layer):
    """A float layer that adds a learned vector per position: x + table, x (batch, length, dim).

    Keras has no such layer (ViTs add a learned position table); this one is a
    plain float layer that quantize_model turns into QuantPositionEmbedding.

    Example:
      >>> PositionEmbedding()(tf.zeros([2, 5, 8])).shape
      TensorShape([2, 5, 8])
    """

    def __init__(self, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=tuple(input_shape[1:]),
                                     initializer=self.initializer)

    def call(self, inputs):
        return inputs + self.table

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(initializer=keras.initializers.serialize(self.initializer))
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantPositionEmbedding(keras.layers.Layer):
    """PositionEmbedding as an int8 ADD of a per-tensor symmetric int8 table.

    Example:
      >>> QuantPositionEmbedding()(tf.zeros([2, 5, 8])).shape
      TensorShape([2, 5, 8])
    """

    def __init__(self, weight_bits=8, quant_delay=0, **kwargs):
        super().__init__(**kwargs)
        self.weight_bits = int(weight_bits)
        self.quant_delay = int(quant_delay)

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=tuple(input_shape[1:]),
                                     initializer="zeros")
        self.step = self.add_weight(name="step", shape=(), dtype="int64", initializer="zeros",
                                    trainable=False, aggregation="only_first_replica")

    def call(self, inputs, training=None):
        training = bool(training)
        table = tf.convert_to_tensor(self.table)
        quantize = lambda: fake_quant_weights(table, self.weight_bits, per_channel=False,
                                              container_bits=8)  # as QuantEmbedding's
        table = quantize() if not training else pass_through_during_delay(
            self.step.value, self.quant_delay, table, quantize)
        if training:
            self.step.assign_add(1)
        return inputs + table

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(weight_bits=self.weight_bits, quant_delay=self.quant_delay)
        return config
