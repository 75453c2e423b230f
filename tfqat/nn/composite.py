"""Layers whose int8 TFLite form is a chain of several ops, each with its own int8 tensor.

A `CompositeQuantLayer` (LayerNormalization, attention) computes that chain in
float with a fake quant on every intermediate tensor, so the QAT model rounds
where the .tflite rounds. Each of those fake quants is an `ActivationQuantizer`
sublayer (tracked or fixed range): `tfqat.calibrate` sets their ranges,
`bypass_quantizers` passes them through and the export checks see them.

`replay_inner_tensors` is for op-by-op checks (tfqat.op_fidelity): while it is
active, each inner fake quant records what it computes and hands on the
.tflite's own value of that tensor instead, so the next op is computed from
exactly the integer model's input.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfqat.nn.quantizers import ActivationQuantizer

_REPLAY = []  # stack of (substitutes, computed) dicts; see replay_inner_tensors


@keras.saving.register_keras_serializable(package="tfqat")
class FiniteRangeQuantizer(ActivationQuantizer):
    """An ActivationQuantizer whose tracked range ignores infinite values.

    For RSQRT's output: TFLite's int8 RSQRT maps a zero input (a variance that
    rounds to 0) to the largest int8 value, as the fake quant clamps 1/sqrt(0)
    = inf to the range max; that inf must not enter the range.

    Example:
      >>> q = FiniteRangeQuantizer()
      >>> _ = q(tf.constant([0.5, 2.0, float("inf")]), training=True)
      >>> q.current_range()
      (0.0, 2.0)
    """

    def _update_range(self, inputs):
        x = tf.cast(inputs, tf.float32)
        finite = tf.math.is_finite(x)
        return super()._update_range(tf.where(finite, x, tf.zeros_like(x)))


class CompositeQuantLayer(keras.layers.Layer):
    """Base of layers with inner int8 tensors: each is fake-quantized by a sublayer.

    Subclasses create their quantizers with `_add_inner_quantizer(tag)` in
    `__init__` and compute each inner tensor with `self._inner(tag, compute, training)`.
    """

    def __init__(self, activation_bits=8, ema_decay=0.999, quant_delay=0, **kwargs):
        super().__init__(**kwargs)
        self.activation_bits = int(activation_bits)
        self.ema_decay = float(ema_decay)
        self.quant_delay = int(quant_delay)
        self._inner_tags = []
        self._used_tags = set()

    def _add_inner_quantizer(self, tag, fixed_range=None, cls=ActivationQuantizer):
        quantizer = cls(bits=self.activation_bits, ema_decay=self.ema_decay,
                        quant_delay=self.quant_delay, fixed_range=fixed_range,
                        name=f"{self.name}_{tag}_fq")
        setattr(self, f"_{tag}_fq", quantizer)
        self._inner_tags.append(tag)
        return quantizer

    def _tags_in_use(self):
        # A quantizer that the layer's calls never apply (a causal mask's, in a call without
        # one) is left out: it never sees data. Keras traces `call` when the layer is called
        # on KerasTensors (subclasses must not define compute_output_shape, which skips it).
        return [tag for tag in self._inner_tags if not self._used_tags or tag in self._used_tags]

    @property
    def inner_quantizers(self) -> list:
        """The inner ActivationQuantizers that the layer applies, in their order."""
        return [getattr(self, f"_{tag}_fq") for tag in self._tags_in_use()]

    @property
    def inner_tensors(self) -> list:
        """(name scope tag, quantizer name) of each inner int8 tensor."""
        return [(tag, getattr(self, f"_{tag}_fq").name) for tag in self._tags_in_use()]

    def _build_inner_quantizers(self):
        # Built here, not on first call, so that loading a saved model finds their variables.
        for quantizer in self.inner_quantizers:
            if not quantizer.built:
                quantizer.build(())

    def _inner(self, tag, compute, training):
        """Fake-quantizes `compute()`, whose ops are made in name scope `tag`.

        The scope names the .tflite tensor (op_fidelity finds it by it).
        """
        with tf.name_scope(tag):
            return self._fq(tag, compute(), training)

    def _fq(self, tag, x, training):
        self._used_tags.add(tag)
        quantizer = getattr(self, f"_{tag}_fq")
        return self._replayed(quantizer.name, quantizer(x, training=training))

    @staticmethod
    def _replayed(key, out):
        """`out`, or under replay_inner_tensors its substitute `key` (recording `out`)."""
        if _REPLAY:
            substitutes, computed = _REPLAY[-1]
            computed[key] = np.asarray(out)
            if key in substitutes:
                return tf.constant(substitutes[key], dtype=out.dtype)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(activation_bits=self.activation_bits, ema_decay=self.ema_decay,
                      quant_delay=self.quant_delay)
        return config


@contextlib.contextmanager
def replay_inner_tensors(substitutes):
    """Inside the block, eager calls of composite layers record and substitute inner tensors.

    `substitutes`: {inner quantizer name: value}; each inner fake quant with a
    value there returns that value instead of its own result. Yields the dict
    {inner quantizer name: what the fake quant computed}.

    Example:
      >>> with replay_inner_tensors({"ln_mean_fq": tflite_mean}) as computed:
      ...     layer(x, training=False)
      >>> computed["ln_centered_fq"]  # x - tflite_mean, fake-quantized
    """
    computed = {}
    _REPLAY.append((dict(substitutes), computed))
    try:
        yield computed
    finally:
        _REPLAY.pop()
