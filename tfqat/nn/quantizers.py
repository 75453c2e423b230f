"""Fake quantization: the weight and activation quantizer math and the
activation quantizer layer that tracks ranges during training.

The ops are TensorFlow's FakeQuantWithMinMaxVars(PerChannel), because those are
the ops the TFLite converter turns into int8 tensors.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfqat.rewrite.graph import all_layers

# An all-zero weight channel still needs a non-zero range for a valid scale.
_MIN_WEIGHT_RANGE = 1e-8

# The narrowest activation range. A dead (all-zero) tensor would otherwise get a scale near 0,
# and the next op's int32 bias (scale s_in * s_w) saturates: the reference kernels then run
# a wrong model, XNNPACK refuses it or crashes. 1e-2 keeps a bias up to ~0.6 in int32 even
# with weights as small as 1e-3 (s_w = 8e-6); only tensors narrower than that are widened.
MIN_ACTIVATION_RANGE = 1e-2


def widen_to_min_range(range_min, range_max):
    """(min, max) with max raised so the range is at least MIN_ACTIVATION_RANGE wide.

    Works on floats and on tensors. Example:
      >>> widen_to_min_range(0.0, 0.0)
      (0.0, 0.01)
    """
    if isinstance(range_min, (int, float)) and isinstance(range_max, (int, float)):
        return range_min, max(range_max, range_min + MIN_ACTIVATION_RANGE)
    return range_min, tf.maximum(range_max, range_min + MIN_ACTIVATION_RANGE)


# Fixed int8 output ranges that TFLite's kernels require.
# softmax/sigmoid: scale 1/256, zero point -128; tanh: scale 1/128, zero point 0.
FIXED_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def fake_quant_weights(weights, bits=8, per_channel=True, container_bits=None):
    """Symmetric, narrow-range fake quantization of a weight tensor.

    The last axis is the output-channel axis. The range is max|w| (per channel
    or over the whole tensor), recomputed on every call.

    container_bits (> bits): the same `bits`-bit values, expressed as a
    `container_bits` fake quant whose range is widened so its step is the
    `bits`-bit step. No weight lies beyond max|w|, so nothing more is clipped:
    the values are identical, and the converter stores them as
    `container_bits`-bit integers (for kernels with no int4 form).

    Example:
      >>> w = tf.constant([[0.5, -2.0], [0.25, 1.0]])
      >>> fake_quant_weights(w, bits=8).shape
      TensorShape([2, 2])
    """
    weights = tf.convert_to_tensor(weights)
    bound, bits = _weight_bound(weights, bits, per_channel, container_bits)
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weights, -bound, bound, num_bits=bits, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars(
        weights, -bound, bound, num_bits=bits, narrow_range=True)


def weight_scale(weights, bits=8, per_channel=True, container_bits=None):
    """The step of `fake_quant_weights` (per output channel, or one): the scale the converter
    gives the int8 weights.

    Example:
      >>> round(float(weight_scale(tf.constant([[1.27]]), per_channel=False)), 6)
      0.01
    """
    bound, bits = _weight_bound(tf.convert_to_tensor(weights), bits, per_channel, container_bits)
    return bound / (2 ** (bits - 1) - 1)


def _weight_bound(weights, bits, per_channel, container_bits):
    """(range bound max|w|, widened to the container's step; fake quant bits)."""
    widen = 1.0
    if container_bits is not None and container_bits > bits:
        widen = (2 ** (container_bits - 1) - 1) / (2 ** (bits - 1) - 1)
        bits = container_bits
    axes = list(range(weights.shape.rank - 1)) if per_channel else None
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(weights), axis=axes),
                                        _MIN_WEIGHT_RANGE))
    return bound * widen, bits


def fake_quant_activations(x, range_min, range_max, bits=8):
    """Per-tensor asymmetric fake quantization of `x` to [range_min, range_max]."""
    return tf.quantization.fake_quant_with_min_max_vars(
        x, tf.stop_gradient(range_min), tf.stop_gradient(range_max), num_bits=bits)


def _global_min_max(local_min, local_max):
    """Min and max over all replicas, so ranges do not depend on the replica count."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local_min, local_max
    gathered = context.all_gather(tf.stack([-local_min, local_max])[None], axis=0)
    extremes = tf.reduce_max(tf.reshape(gathered, [-1, 2]), axis=0)
    return -extremes[0], extremes[1]


def add_step_counter(layer):
    """The training-step counter of a QAT layer (the quant_delay and bn_freeze_delay clock).

    One counter per layer, counted on the first replica only, so that it does
    not depend on the number of replicas.
    """
    return layer.add_weight(name="step", shape=(), dtype="int64", initializer="zeros",
                            trainable=False, aggregation="only_first_replica")


def pass_through_during_delay(step, quant_delay, unquantized, quantize_fn):
    """`quantize_fn()` once `step` reaches `quant_delay`, else `unquantized`."""
    if not quant_delay:
        return quantize_fn()
    return tf.cond(step < quant_delay, lambda: tf.identity(unquantized), quantize_fn)


def fake_quant_after_delay(x, range_min, range_max, bits, training, step, quant_delay,
                           counted=False):
    """The activation fake quant as training and inference apply it.

    Inference always quantizes; training passes `x` through while the step
    counter `step` (an int64 variable) is below `quant_delay`; counted=True:
    this step has already been added to it. Counting steps and bypassing are
    the caller's (ActivationQuantizer, tfqat.nn.activations.QuantActivation).
    """
    quantize = lambda: fake_quant_activations(x, range_min, range_max, bits)
    if not training:
        return quantize()
    current = step.value - 1 if counted else step.value
    return pass_through_during_delay(current, quant_delay, x, quantize)


@keras.saving.register_keras_serializable(package="tfqat")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes an activation tensor to `bits` with one per-tensor range.

    With `fixed_range=None`, the range is an exponential moving average of the
    batch min/max (always widened to include 0), initialized from the first
    training batch. Inference uses the stored range. With `fixed_range=(lo, hi)`
    the range never changes (softmax, sigmoid, tanh outputs).

    Example:
      >>> q = ActivationQuantizer(bits=8, ema_decay=0.99)
      >>> y = q(tf.random.normal([4, 3]), training=True)
      >>> float(q.range_min) <= 0.0 <= float(q.range_max)
      True
    """

    bypassable = True  # read by bypass_quantizers

    def __init__(self, bits=8, ema_decay=0.999, quant_delay=0, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        self.bits = int(bits)
        self.ema_decay = float(ema_decay)
        self.quant_delay = int(quant_delay)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)
        self._bypassed = False  # set only by bypass_quantizers()
        self.observer = None  # set by calibrate: called with each (eager) input

    def build(self, input_shape):
        if self.fixed_range is None:
            self.range_min = self.add_weight(
                name="range_min", shape=(), initializer="zeros", trainable=False,
                aggregation="mean")
            self.range_max = self.add_weight(
                name="range_max", shape=(), initializer="zeros", trainable=False,
                aggregation="mean")
        self.step = add_step_counter(self)
        # Whether the range has been set from data (by training or calibrate), apart from the
        # step counter: calibration sets a range without taking a training step.
        self.calibrated = self.add_weight(
            name="calibrated", shape=(), dtype="bool", initializer="zeros", trainable=False,
            aggregation="only_first_replica")

    def load_own_variables(self, store):
        if len(store.keys()) == len(self.variables) - 1:
            # Saved before the `calibrated` flag existed: a range was set once a step ran.
            for variable, key in zip(self.variables[:-1], sorted(store.keys(), key=int)):
                variable.assign(store[key])
            self.calibrated.assign(self.fixed_range is not None or int(self.step.numpy()) > 0)
            return
        super().load_own_variables(store)

    @property
    def is_calibrated(self) -> bool:
        """False while a tracked range has never seen data."""
        return self.fixed_range is not None or bool(self.calibrated.numpy())

    def set_range(self, lo: float, hi: float) -> None:
        """Sets the tracked range (as calibration does): it counts as calibrated from now on,
        and training continues its moving average from it.

        Example:
          >>> quantizer.set_range(0.0, 6.0); quantizer.is_calibrated
          True
        """
        if self.fixed_range is not None:
            raise ValueError(f"Quantizer '{self.name}' has the fixed range {self.fixed_range}; "
                             "it cannot be set.")
        self.range_min.assign(lo)
        self.range_max.assign(hi)
        self.calibrated.assign(True)

    def scale(self):
        """The int8 step of the current range, as a float32 tensor: the scale the converter
        gives this quantizer's tensor ((max - min) / (2^bits - 1))."""
        lo, hi = self.fixed_range if self.fixed_range is not None else (self.range_min,
                                                                         self.range_max)
        return (tf.cast(hi, tf.float32) - tf.cast(lo, tf.float32)) / float(2 ** self.bits - 1)

    def current_range(self):
        """(min, max) as Python floats."""
        if self.fixed_range is not None:
            return self.fixed_range
        return float(self.range_min.numpy()), float(self.range_max.numpy())

    def call(self, inputs, training=None, tied=False, ahead=False):
        """Fake-quantizes `inputs`.

        tied=True: a further call that rounds another tensor to this quantizer's
        scale, for an op whose int8 kernel keeps its input's scale and rounds
        to it (AVERAGE_POOL_2D, RESIZE_BILINEAR). The range is read, not
        tracked, and the training step is not counted again.

        ahead=True (with tied): the tied call runs before the untied call of the
        step (a Concatenate's input, at the scale of the concatenation after it,
        whose values the untied call tracks). It reads the range of the last
        step, and passes through until a range has been observed.
        """
        if self.observer is not None and not tied:
            self.observer(inputs)
        if self._bypassed:
            return tf.identity(inputs)
        if self.fixed_range is not None:
            lo, hi = self.fixed_range
        elif training and not tied:
            lo, hi = self._update_range(inputs)
        else:
            lo, hi = self.range_min, self.range_max
        if tied and ahead and training and self.fixed_range is None:
            return tf.cond(
                self.calibrated,
                lambda: fake_quant_after_delay(inputs, lo, hi, self.bits, training, self.step,
                                               self.quant_delay, counted=False),
                lambda: tf.identity(inputs))
        # A tied call comes after the untied call of the same step, which has counted it.
        out = fake_quant_after_delay(inputs, lo, hi, self.bits, training, self.step,
                                     self.quant_delay, counted=tied)
        if training and not tied:
            self.step.assign_add(1)
        return out

    def _update_range(self, inputs):
        x = tf.stop_gradient(tf.cast(inputs, tf.float32))
        batch_min, batch_max = _global_min_max(tf.reduce_min(x), tf.reduce_max(x))
        batch_min = tf.minimum(batch_min, 0.0)
        batch_max = tf.maximum(batch_max, 0.0)
        first = tf.logical_not(self.calibrated)
        decay = self.ema_decay
        new_min = tf.where(first, batch_min, decay * self.range_min + (1.0 - decay) * batch_min)
        new_max = tf.where(first, batch_max, decay * self.range_max + (1.0 - decay) * batch_max)
        new_min, new_max = widen_to_min_range(new_min, new_max)
        self.range_min.assign(new_min)
        self.range_max.assign(new_max)
        self.calibrated.assign(True)
        return new_min, new_max

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            bits=self.bits, ema_decay=self.ema_decay, quant_delay=self.quant_delay,
            fixed_range=None if self.fixed_range is None else list(self.fixed_range))
        return config


@contextlib.contextmanager
def bypass_quantizers(model):
    """Inside the block, every activation fake quant of `model` passes its input through.

    Calibration and error reports need the float activation at each quantizer's
    input with no activation quantized upstream; this switch gives it without
    building a second, float copy of the model. It acts on every layer with a
    true `bypassable` attribute: ActivationQuantizers and the inner fixed-range
    fake quants of `tfqat.nn.activations.QuantActivation`. Ranges and step
    counters are left alone. The flag is read when `call` runs: it acts on
    eager calls and on functions traced inside the block, not on functions
    traced before it. Yields the ActivationQuantizers, in `model.layers` order
    (nested models included).

    Example:
      >>> with bypass_quantizers(qat_model):
      ...     float_like = qat_model(x, training=False)  # weights still fake-quantized
    """
    switched = [layer for layer in all_layers(model)
                if getattr(layer, "bypassable", False)]
    previous = [layer._bypassed for layer in switched]
    for layer in switched:
        layer._bypassed = True
    try:
        yield [layer for layer in switched if isinstance(layer, ActivationQuantizer)]
    finally:
        for layer, was in zip(switched, previous):
            layer._bypassed = was
