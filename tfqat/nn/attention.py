"""MultiHeadAttention as the int8 ops TFLite runs it.

Checked with TF 2.21's converter (docs/design.md, "Integer-only
transformer ops"): the q/k/v and output projections are matmuls with per-tensor
weights (int8 FULLY_CONNECTED; per-channel weights hit the converter's
"mismatched quantized axes" error), the head split is RESHAPE + TRANSPOSE
(scale-preserving), q k^T and p v are int8 BATCH_MATMUL when each output has
its own fake quant, and softmax with the fixed [0, 255/256] range is int8
SOFTMAX. Keras scales the projected query by 1/sqrt(key_dim); here that factor
is folded into the query kernel and bias (exact in float, and per-tensor
symmetric quantization scales with it), which saves a MUL and a rounding.

An attention_mask tensor (float, 1 = attend, 0 = not; (batch, T, S)) becomes the same
penalty computed in int8: (mask - 1) * span, with a fake quant on each step. A bool
mask (True = attend) selects the penalty instead: SELECT_V2(mask, 0, -span), whose int8
kernel takes the bool condition and two constant branches at the penalty's scale; an
int32 mask (non-zero = attend) becomes that bool by NOT_EQUAL(mask, 0). The bool and
int32 inputs stay as they are in the .tflite (only float inputs become int8).

A causal mask is an additive constant: 0 where attention is allowed and
-(span + MASK_MARGIN) where not, span being the scores' int8 range
(range_max - range_min, read from the scores quantizer: a constant in the
exported model). Every masked score then lies MASK_MARGIN below the lowest
score any row can have, so its softmax weight is below exp(-MASK_MARGIN) even
in a row whose allowed scores are all at the range minimum; int8 SOFTMAX
rounds it to 0. Rounding a masked score to the scores' own scale (saturating
at its minimum) would not do: a row of low allowed scores would attend to
masked positions. The masked sum has its own tracked fake quant (a span of
about 2 * span + MASK_MARGIN: one bit less resolution than the scores).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfqat.nn.composite import CompositeQuantLayer
from tfqat.nn.quantizers import FIXED_RANGES, fake_quant_weights, pass_through_during_delay

# exp(-MASK_MARGIN) must vanish in LiteRT's int8 SOFTMAX, masked scores included in its sum:
# measured, a margin of 10 let keys masked out change 4% of the outputs by up to 3 LSB (through
# the normaliser); 16 changes none.
MASK_MARGIN = 16.0


@keras.saving.register_keras_serializable(package="tfqat")
class QuantMultiHeadAttention(CompositeQuantLayer):
    """Multi-head dot-product attention with a fake quant on each int8 tensor.

    Called like keras.layers.MultiHeadAttention: `layer(query, value, key=None,
    attention_mask=None, use_causal_mask=False)`, inputs (batch, length, features), the
    mask (batch, T, S): float 0s and 1s, bool, or int32 (non-zero = attend). The output's
    fake quant is the rewrite rule's.

    Args:
      num_heads, key_dim, value_dim, use_bias, dropout: as keras.layers.MultiHeadAttention.
      output_dim: the output features (None: the query's).
      weight_bits: bits of the per-tensor symmetric projection weights.
      activation_bits, ema_decay, quant_delay: of the inner fake quants.

    Example:
      >>> mha = QuantMultiHeadAttention(num_heads=2, key_dim=4, name="mha")
      >>> x = tf.random.normal([2, 5, 8])
      >>> mha(x, x, training=True).shape
      TensorShape([2, 5, 8])
    """

    def __init__(self, num_heads, key_dim, value_dim=None, use_bias=True, output_dim=None,
                 dropout=0.0, weight_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim or key_dim)
        self.use_bias = bool(use_bias)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.dropout = float(dropout)
        self.weight_bits = int(weight_bits)
        for tag in ("query", "key", "value", "scores", "mask_causal", "mask_offset",
                    "mask_penalty", "masked"):
            self._add_inner_quantizer(tag)
        self._add_inner_quantizer("probs", fixed_range=FIXED_RANGES["softmax"])
        self._add_inner_quantizer("context")
        self._dropout_layer = keras.layers.Dropout(self.dropout)

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        heads = self.num_heads
        out_dim = self.output_dim or query_shape[-1]
        shapes = {"query": (query_shape[-1], heads * self.key_dim),
                  "key": (key_shape[-1], heads * self.key_dim),
                  "value": (value_shape[-1], heads * self.value_dim),
                  "output": (heads * self.value_dim, out_dim)}
        self.kernels, self.biases = {}, {}
        for name, shape in shapes.items():
            self.kernels[name] = self.add_weight(name=f"{name}_kernel", shape=shape,
                                                 initializer="glorot_uniform")
            self.biases[name] = self.add_weight(name=f"{name}_bias", shape=(shape[1],),
                                                initializer="zeros") if self.use_bias else None
        self.step = self.add_weight(name="step", shape=(), dtype="int64", initializer="zeros",
                                    trainable=False, aggregation="only_first_replica")
        self._build_inner_quantizers()

    def _project(self, name, x, training, factor=1.0):
        kernel = tf.convert_to_tensor(self.kernels[name]) * factor
        quantize = lambda: fake_quant_weights(kernel, self.weight_bits, per_channel=False)
        kernel = quantize() if not training else pass_through_during_delay(
            self.step.value, self.quant_delay, kernel, quantize)
        out = tf.matmul(x, kernel)
        if self.biases[name] is not None:
            out = out + tf.convert_to_tensor(self.biases[name]) * factor
        return out

    def _split_heads(self, x, dim):
        # (B, T, H * dim) -> (B, H, T, dim): RESHAPE and TRANSPOSE keep the int8 scale.
        x = tf.reshape(x, [-1, x.shape[1], self.num_heads, dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, query, value, key=None, attention_mask=None, return_attention_scores=False,
             training=None, use_causal_mask=False):
        if return_attention_scores:
            raise ValueError(
                f"MultiHeadAttention '{self.name}' is called with return_attention_scores; "
                "tfqat quantizes attention returning the output only. Leave the layer in "
                f"float with QuantConfig(exclude=('{self.name}',)).")
        if attention_mask is not None and attention_mask.dtype not in (tf.bool, tf.int32) \
                and not attention_mask.dtype.is_floating:
            raise ValueError(
                f"MultiHeadAttention '{self.name}' is called with an attention_mask of dtype "
                f"{attention_mask.dtype.name}; tfqat quantizes a bool, int32 or float mask "
                "(1/True = attend). Pass the mask as a bool or int32 input, or leave the layer "
                f"in float with QuantConfig(exclude=('{self.name}',)).")
        training = bool(training)
        key = value if key is None else key
        inner = lambda tag, compute, **kw: self._inner(tag, compute, training, **kw)
        scale = 1.0 / np.sqrt(self.key_dim)
        q = inner("query", lambda: self._project("query", query, training, scale))
        k = inner("key", lambda: self._project("key", key, training))
        v = inner("value", lambda: self._project("value", value, training))
        q = self._split_heads(q, self.key_dim)
        k = self._split_heads(k, self.key_dim)
        v = self._split_heads(v, self.value_dim)
        scores = inner("scores", lambda: tf.matmul(q, k, transpose_b=True))
        steps_q, steps_k = query.shape[1], key.shape[1]
        causal = np.tril(np.ones((steps_q, steps_k), "float32"))  # as Keras: key j <= query i
        scores_fq = self._scores_fq
        span = tf.stop_gradient(scores_fq.range_max - scores_fq.range_min) + MASK_MARGIN
        if attention_mask is not None and not attention_mask.dtype.is_floating:
            # A bool or int32 mask picks the penalty: SELECT_V2(mask, 0, -span), both branches
            # constants at the penalty's int8 scale; an int32 mask becomes bool by NOT_EQUAL
            # (an integer comparison). No CAST, no float op.
            mask = attention_mask
            if mask.dtype != tf.bool:
                mask = tf.not_equal(mask, 0)
            allowed = tf.constant(causal - 1.0) * span if use_causal_mask else 0.0
            penalty = inner("mask_penalty", lambda: tf.where(mask, allowed, -span))
            penalty = tf.expand_dims(penalty, 1)  # (B, T, S) -> (B, 1, T, S): over the heads
            scores = inner("masked", lambda: scores + penalty)
        elif attention_mask is not None:
            # (mask - 1) * span: 0 where attended, -span where not; every tensor int8 (MUL,
            # SUB, MUL, then ADD to the scores), each exact at its tracked range's ends.
            mask = attention_mask
            if use_causal_mask:
                mask = inner("mask_causal", lambda: mask * tf.constant(causal))
            offset = inner("mask_offset", lambda: mask - 1.0)
            penalty = inner("mask_penalty", lambda: offset * span)
            penalty = tf.expand_dims(penalty, 1)  # (B, T, S) -> (B, 1, T, S): over the heads
            scores = inner("masked", lambda: scores + penalty)
        elif use_causal_mask:
            penalty = tf.constant(causal - 1.0) * span
            scores = inner("masked", lambda: scores + penalty)
        probs = inner("probs", lambda: tf.nn.softmax(scores, axis=-1))
        if training and self.dropout:
            probs = self._dropout_layer(probs, training=True)
        context = inner("context", lambda: tf.matmul(probs, v))
        context = tf.transpose(context, [0, 2, 1, 3])
        context = tf.reshape(context, [-1, context.shape[1], self.num_heads * self.value_dim])
        outputs = self._project("output", context, training)
        if training:
            self.step.assign_add(1)
        return outputs

    def load_float_weights(self, mha):
        """Copies the projections of a built keras.layers.MultiHeadAttention."""
        dense = {"query": mha._query_dense, "key": mha._key_dense, "value": mha._value_dense,
                 "output": mha._output_dense}
        for name, layer in dense.items():
            self.kernels[name].assign(np.reshape(layer.kernel.numpy(), self.kernels[name].shape))
            if self.biases[name] is not None:
                self.biases[name].assign(np.reshape(layer.bias.numpy(), self.biases[name].shape))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim,
                      use_bias=self.use_bias, output_dim=self.output_dim, dropout=self.dropout,
                      weight_bits=self.weight_bits)
        return config
