"""Quantized compute layers: Conv2D, DepthwiseConv2D, Dense, Conv1D,
Conv2DTranspose, a standalone BatchNormalization and a per-channel input
affine (Rescaling/Normalization), each with fake-quantized weights, an optional
folded BatchNormalization and an optional fused ReLU/ReLU6.

BatchNorm folding follows Jacob et al. 2018 and Krishnamoorthi 2018 §3.2.2
(see docs/design.md):

    sigma_mv = sqrt(moving_variance + eps)
    before the freeze (training):
      correction_scale  = sigma_b / sigma_mv
      correction_recip  = 1 / correction_scale
      correction_offset = 0
      w_fold = W * gamma / sigma_b * correction_scale          (== W * gamma / sigma_mv)
      out = correction_recip * op(x, FQ(w_fold)) + beta + gamma * (b - mu_b) / sigma_b
    after the freeze (training) and at inference:
      out = op(x, FQ(W * gamma / sigma_mv)) + beta + gamma * (b - mu_mv) / sigma_mv

After the freeze, correction_recip is 1 and correction_offset
gamma * (mu_b / sigma_b - mu_mv / sigma_mv) cancels the batch terms exactly, in
value and gradient, so the frozen branch skips the batch-statistics op.
"""

from __future__ import annotations

import contextlib

import numpy as np
import keras
import tensorflow as tf

from tfqat.config import BN_FOLD_MODES
from tfqat.nn.quantizers import (add_step_counter, fake_quant_weights, pass_through_during_delay,
                                 weight_scale)

FUSABLE_ACTIVATIONS = {
    None: tf.identity,
    "linear": tf.identity,
    "relu": tf.nn.relu,
    "relu6": tf.nn.relu6,
}


class FusedQuantLayer(keras.layers.Layer):
    """Base of the quantized compute layers.

    Subclasses say how to make the kernel and how to apply it: `_kernel_shape`,
    `_out_channels`, `_kernel_view` (the kernel with the output channel as its
    last axis, the axis of per-channel quantization) and `_linear` (the op
    applied to a kernel view, bias excluded).

    Args:
      use_bias: whether the op had a bias (folded into the BN offset).
      activation: None, "relu" or "relu6", fused into the op.
      batchnorm: None, or a dict with the folded BatchNormalization's
        `epsilon`, `momentum`, `center` and `scale`.
      weight_bits, per_channel, quant_delay, bn_freeze_delay, bn_fold: as in
        QuantConfig.
    """

    def __init__(self, *, use_bias=True, activation=None, batchnorm=None, weight_bits=8,
                 per_channel=True, quant_delay=0, bn_freeze_delay=None, bn_fold="exact",
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if activation not in FUSABLE_ACTIVATIONS:
            raise ValueError(
                f"Layer '{self.name}': activation {activation!r} cannot be fused; "
                f"use one of {sorted(k for k in FUSABLE_ACTIVATIONS if k)} or None.")
        self.use_bias = bool(use_bias)
        self.activation = None if activation == "linear" else activation
        self.batchnorm = None if batchnorm is None else {
            "epsilon": float(batchnorm.get("epsilon", 1e-3)),
            "momentum": float(batchnorm.get("momentum", 0.99)),
            "center": bool(batchnorm.get("center", True)),
            "scale": bool(batchnorm.get("scale", True)),
        }
        self.weight_bits = int(weight_bits)
        self.per_channel = bool(per_channel)
        self.quant_delay = int(quant_delay)
        self.bn_freeze_delay = None if bn_freeze_delay is None else int(bn_freeze_delay)
        if bn_fold not in BN_FOLD_MODES:
            raise ValueError(f"Layer '{self.name}': bn_fold={bn_fold!r}; use one of {BN_FOLD_MODES}.")
        self.bn_fold = bn_fold
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    # ---- subclass hooks -------------------------------------------------
    def _kernel_shape(self, input_shape):
        raise NotImplementedError

    def _out_channels(self, input_shape):
        raise NotImplementedError

    def _kernel_view(self, kernel):
        return kernel

    def _linear(self, x, kernel_view):
        raise NotImplementedError

    def _to_op_layout(self, inputs):
        """The input as the op wants it (Dense as 1x1 conv wants [N, 1, 1, C])."""
        return inputs

    def _from_op_layout(self, outputs, inputs):
        return outputs

    # ---- Keras API ------------------------------------------------------
    def build(self, input_shape):
        channels = self._out_channels(input_shape)
        kernel_shape = self._kernel_shape(input_shape)
        self.kernel = None
        if kernel_shape is not None:
            self.kernel = self.add_weight(
                name="kernel", shape=kernel_shape, initializer=self.kernel_initializer)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None
        if self.batchnorm is not None:
            if self.batchnorm["scale"]:
                self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
            if self.batchnorm["center"]:
                self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
            self.moving_mean = self.add_weight(
                name="moving_mean", shape=(channels,), initializer="zeros", trainable=False,
                aggregation="mean")
            self.moving_variance = self.add_weight(
                name="moving_variance", shape=(channels,), initializer="ones", trainable=False,
                aggregation="mean")
        self.step = add_step_counter(self)
        self._channels = channels

    def call(self, inputs, training=None):
        # Bias, BN offset and activation stay in the op's layout so TFLite fuses them.
        training = bool(training)
        op_inputs = self._to_op_layout(inputs)
        outputs = self._call_in_op_layout(op_inputs, training)
        return self._from_op_layout(FUSABLE_ACTIVATIONS[self.activation](outputs), inputs)

    def _call_in_op_layout(self, inputs, training):
        if self.batchnorm is None:
            kernel_view = self._raw_kernel_view()
            outputs = self._linear(inputs, self._quantize(kernel_view, training))
            if self.bias is not None:
                outputs = outputs + (self.bias if training else
                                     self._on_bias_grid(self.bias, kernel_view))
        elif not (training and self.trainable):
            # Like Keras BatchNormalization, a frozen (non-trainable) layer uses moving stats.
            outputs = self._folded_frozen(inputs, training)
        elif self.bn_freeze_delay is None:
            outputs = self._folded_with_batch_stats(inputs)
        elif _replicas_in_sync() > 1 or SELECT_FREEZE or _compiling_with_xla():
            # Cross-replica batch statistics cannot sit inside tf.cond, and XLA runs the
            # convolutions of a conditional slowly (CPU: 80x): one pass that selects per channel.
            outputs = self._folded_with_batch_stats(
                inputs, frozen=self.step >= self.bn_freeze_delay)
        else:
            outputs = tf.cond(
                self.step >= self.bn_freeze_delay,
                lambda: self._folded_frozen(inputs, True),
                lambda: self._folded_with_batch_stats(inputs))
        if training:
            self.step.assign_add(1)
        return outputs

    # ---- folding --------------------------------------------------------
    def _raw_kernel_view(self):
        if self.kernel is None:
            return self._kernel_view(tf.ones([self._channels]))
        return self._kernel_view(self.kernel)

    def _container_bits(self):
        # TF 2.21's converter re-grids 5-7-bit fake-quantized weights to 127 levels (per
        # tensor up to 7 LSB off the QAT model, per channel 2 LSB; found by
        # tests/test_fuzz_graphs.py): fewer bits are carried as int8 values on the
        # weight_bits grid, the same values. 4-bit per-channel weights it keeps as they are.
        return None if self.per_channel and self.weight_bits <= 4 else 8

    def _quantize(self, kernel_view, training):
        quantize = lambda: fake_quant_weights(kernel_view, self.weight_bits, self.per_channel,
                                              container_bits=self._container_bits())
        if not training:
            return quantize()
        return pass_through_during_delay(self.step.value, self.quant_delay, kernel_view, quantize)

    def _bn_affine(self):
        """(gamma, beta, conv bias) as tensors, with the absent ones as 1 or 0."""
        ones = tf.ones([self._channels])
        zeros = tf.zeros([self._channels])
        gamma = ones if self.gamma is None else tf.convert_to_tensor(self.gamma)
        beta = zeros if self.beta is None else tf.convert_to_tensor(self.beta)
        bias = zeros if self.bias is None else tf.convert_to_tensor(self.bias)
        return gamma, beta, bias

    def _moving_sigma(self):
        return tf.sqrt(tf.convert_to_tensor(self.moving_variance) + self.batchnorm["epsilon"])

    def folded_kernel_view(self):
        """W * gamma / sigma_mv (W alone without BN): the weights that get exported."""
        if self.batchnorm is None:
            return self._raw_kernel_view()
        gamma, _, _ = self._bn_affine()
        return self._raw_kernel_view() * (gamma / self._moving_sigma())

    def quantized_kernel_view(self):
        """FQ(folded_kernel_view()): the exported weights in float."""
        return self._quantize(self.folded_kernel_view(), training=False)

    def folded_bias(self):
        """beta + gamma * (b - mean_mv) / sigma_mv (b alone without BN), or None without any
        bias: the bias that gets exported (the converter quantizes it to int32).

        Example:
          >>> layer = QuantConv2D(4, 3, batchnorm={"epsilon": 1e-3})
          >>> layer.build((None, 8, 8, 3)); layer.folded_bias().shape
          TensorShape([4])
        """
        if self.batchnorm is None:
            return None if self.bias is None else tf.convert_to_tensor(self.bias)
        gamma, beta, bias = self._bn_affine()
        return beta + gamma * (bias - self.moving_mean) / self._moving_sigma()

    def _folded_frozen(self, inputs, training):
        gamma, beta, bias = self._bn_affine()
        sigma_mv = self._moving_sigma()
        kernel_view = self.folded_kernel_view()
        outputs = self._linear(inputs, self._quantize(kernel_view, training))
        offset = beta + gamma * (bias - self.moving_mean) / sigma_mv
        return outputs + (offset if training else self._on_bias_grid(offset, kernel_view))

    # ---- the int32 bias -------------------------------------------------
    def link_input_quantizer(self, quantizer):
        """Makes inference add the bias on the int32 grid the converter stores it on
        (s_in * s_w per channel), `quantizer` being the ActivationQuantizer whose tensor this
        layer reads. QATModel links its layers; without a link the bias stays float.

        Why (docs/design.md, "Fidelity on deep nets"): with a float bias, 0.03-0.09 % of a
        conv's int8 outputs differ by 1 LSB from XNNPACK's, and deep nets compound them.
        The link is not tracked (the quantizer is the model's layer, not this one's).

        Example:
          >>> conv.link_input_quantizer(qat.get_layer("conv1_input_fq"))
        """
        self.__dict__["_input_quantizer"] = quantizer

    def _on_bias_grid(self, bias, kernel_view):
        quantizer = self.__dict__.get("_input_quantizer")
        if quantizer is None or quantizer._bypassed or _FLOAT_BIAS[0]:
            return bias
        grid = quantizer.scale() * weight_scale(kernel_view, self.weight_bits, self.per_channel,
                                                self._container_bits())
        # Straight-through: the rounding's gradient is the identity (e.g. under tf.GradientTape
        # in inference mode); a range not set yet (zero scale) leaves the bias as it is.
        rounded = bias + tf.stop_gradient(tf.round(tf.math.divide_no_nan(bias, grid)) * grid - bias)
        return tf.where(grid > 0, rounded, bias)

    def _folded_with_batch_stats(self, inputs, frozen=None):
        """The batch-statistics form; with a boolean tensor `frozen`, the frozen form where
        it is true (same quantized conv; the corrections select per channel)."""
        gamma, beta, bias = self._bn_affine()
        # w_fold = W * gamma / sigma_b * correction_scale == W * gamma / sigma_mv, and the
        # gradient through sigma_b cancels exactly: computed from sigma_mv, the trained
        # weights are bit for bit the exported ones, with fewer ops.
        w_fold = self.folded_kernel_view()
        quantized_outputs = self._linear(inputs, self._quantize(w_fold, True))
        eps = self.batchnorm["epsilon"]
        sigma_mv = self._moving_sigma()
        if self.bn_fold == "exact":
            unbiased_mean, batch_variance = self._moments(
                self._linear(inputs, self._raw_kernel_view()))
        else:
            # One convolution: the statistics of conv(x, W) estimated from those of the
            # quantized conv(x, W * scale), scale = gamma / sigma_mv; a zero gamma gives
            # zero weights, so that channel keeps its moving statistics.
            scale = gamma / sigma_mv
            quantized_mean, quantized_variance = self._moments(quantized_outputs)
            unbiased_mean = tf.math.divide_no_nan(quantized_mean, scale)
            batch_variance = tf.math.divide_no_nan(quantized_variance, tf.square(scale))
            dead = tf.equal(scale, 0.0)
            unbiased_mean = tf.where(dead, self.moving_mean - bias, unbiased_mean)
            batch_variance = tf.where(dead, tf.convert_to_tensor(self.moving_variance),
                                      batch_variance)
        batch_mean = unbiased_mean + bias  # the conv bias only shifts the mean
        sigma_b = tf.sqrt(batch_variance + eps)
        correction_scale = tf.identity(sigma_b / sigma_mv, name="correction_scale")
        correction_recip = tf.identity(1.0 / correction_scale, name="correction_recip")
        correction_offset = tf.identity(tf.zeros_like(batch_mean), name="correction_offset")
        # Per-channel terms are summed first: one broadcast add on the full tensor.
        offset = beta + gamma * (bias - batch_mean) / sigma_b + correction_offset
        if frozen is not None:
            # Frozen: correction_recip 1 and the moving-statistics offset of _folded_frozen,
            # so either way the values (and gradients) are those of the tf.cond form.
            correction_recip = tf.where(frozen, tf.ones_like(correction_recip), correction_recip)
            offset = tf.where(frozen, beta + gamma * (bias - self.moving_mean) / sigma_mv, offset)
        outputs = correction_recip * quantized_outputs + offset
        momentum = self.batchnorm["momentum"]
        for moving, batch in ((self.moving_mean, batch_mean), (self.moving_variance, batch_variance)):
            updated = moving * momentum + batch * (1.0 - momentum)
            moving.assign(updated if frozen is None else tf.where(frozen, moving, updated))
        return outputs

    def _moments(self, outputs):
        axes = list(range(len(outputs.shape) - 1))
        # Synchronized across replicas so results do not depend on the replica count.
        return keras.ops.moments(outputs, axes=axes, synchronized=_replicas_in_sync() > 1)

    def bn_frozen(self) -> bool:
        """Whether training now uses the moving statistics."""
        return self.bn_freeze_delay is not None and int(self.step.numpy()) >= self.bn_freeze_delay

    # ---- weights from the float model ----------------------------------
    def load_float_weights(self, linear_layer=None, batchnorm_layer=None):
        """Copies kernel/bias from `linear_layer` and BN state from `batchnorm_layer`."""
        if linear_layer is not None:
            self.kernel.assign(linear_layer.kernel)
            if self.bias is not None:
                self.bias.assign(linear_layer.bias)
        if batchnorm_layer is not None:
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                ours = getattr(self, name)
                if ours is not None:
                    ours.assign(getattr(batchnorm_layer, name))

    def get_config(self):
        config = super().get_config()
        config.update(
            use_bias=self.use_bias, activation=self.activation, batchnorm=self.batchnorm,
            weight_bits=self.weight_bits, per_channel=self.per_channel,
            quant_delay=self.quant_delay, bn_freeze_delay=self.bn_freeze_delay,
            bn_fold=self.bn_fold, kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


# Tests set it to run the single-pass freeze switch outside XLA and distribution too.
SELECT_FREEZE = False
# [True] while a conversion traces the model: the converter rounds the float bias itself (and
# export's bias nudge for the converter's splat-bias bug must not be rounded away).
_FLOAT_BIAS = [False]


@contextlib.contextmanager
def float_bias():
    """Inference adds the float bias, not its int32-grid value, while this is open (the
    converter's tracing; see FusedQuantLayer.link_input_quantizer).

    Example:
      >>> with float_bias():
      ...     flatbuffer = converter.convert()
    """
    previous = _FLOAT_BIAS[0]
    _FLOAT_BIAS[0] = True
    try:
        yield
    finally:
        _FLOAT_BIAS[0] = previous


def _compiling_with_xla() -> bool:
    """Whether the function being traced compiles with XLA (jit_compile=True)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a private module: without it, keep the tf.cond form
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _replicas_in_sync() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _restore_leading_dims(outputs, inputs, channels):
    """Reshapes [N', 1, 1, channels] or [N', channels] back to inputs' leading dims + [channels]."""
    inner = list(inputs.shape[1:-1])
    if all(d is not None for d in inner):  # a static shape keeps TFLite free of SHAPE ops
        return tf.reshape(outputs, [-1, *inner, channels])
    return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [channels]], axis=0))


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _single(value):
    return (value,) if isinstance(value, int) else tuple(value)


class _QuantConvolution(FusedQuantLayer):
    """Base of the convolutions: filters, kernel size, strides, padding, dilation.

    `_spatial` turns an int or a sequence into the subclass's form of a
    spatial argument (a pair for 2-D, an int for 1-D).
    """

    _spatial = staticmethod(_pair)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = self._spatial(kernel_size)
        self.strides = self._spatial(strides)
        self.padding = padding.lower()
        self.dilation_rate = self._spatial(dilation_rate)

    @classmethod
    def from_float(cls, layer, **settings):
        """The QAT layer for float convolution `layer` (its geometry), with `settings`
        (use_bias, activation, batchnorm, bits, delays, name)."""
        return cls(layer.filters, layer.kernel_size, strides=layer.strides,
                   padding=layer.padding, dilation_rate=layer.dilation_rate, **settings)

    def _out_channels(self, input_shape):
        return self.filters

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding, dilation_rate=self.dilation_rate)
        return config


class _GroupedConvolution(_QuantConvolution):
    """A convolution with `groups`: groups > 1 is one grouped CONV_2D (its filter has
    C / groups input channels), which the converter keeps one integer-only CONV_2D and
    LiteRT's int8 kernels run (checked, TF 2.21). Subclasses give `_conv(inputs, kernel)`.
    """

    @classmethod
    def from_float(cls, layer, **settings):
        """The QAT layer for float convolution `layer`; see _QuantConvolution.from_float."""
        return cls(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                   dilation_rate=layer.dilation_rate, groups=getattr(layer, "groups", 1),
                   **settings)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 groups=1, **kwargs):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, **kwargs)
        self.groups = int(groups)
        if self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"Layer '{self.name}': groups={groups} must be positive and "
                             f"divide filters={filters}.")

    def _group_channels(self, input_shape):
        if input_shape[-1] % self.groups:
            raise ValueError(f"Layer '{self.name}': groups={self.groups} does not divide the "
                             f"{input_shape[-1]} input channels.")
        return input_shape[-1] // self.groups

    def _linear(self, x, kernel_view):
        if self.groups == 1:
            return self._conv(x, kernel_view)
        return _grouped_conv(self._conv, self.groups, x, kernel_view)

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantConv2D(_GroupedConvolution):
    """Conv2D (channels_last) with quantized, optionally BN-folded weights.

    Example:
      >>> layer = QuantConv2D(8, 3, padding="same", activation="relu",
      ...                     batchnorm={"epsilon": 1e-3, "momentum": 0.99})
      >>> layer(tf.zeros([1, 8, 8, 3])).shape
      TensorShape([1, 8, 8, 8])
    """

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, self._group_channels(input_shape), self.filters)

    def _conv(self, inputs, kernel):
        return tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper(),
                            dilations=self.dilation_rate)


@keras.saving.register_keras_serializable(package="tfqat")
class QuantDepthwiseConv2D(FusedQuantLayer):
    """DepthwiseConv2D (channels_last) with quantized, optionally BN-folded weights.

    Output channel c * depth_multiplier + m uses kernel[..., c, m]; the kernel
    view flattens (c, m) into that one channel axis.

    Example:
      >>> layer = QuantDepthwiseConv2D(3, padding="same", depth_multiplier=2)
      >>> layer(tf.zeros([1, 8, 8, 4])).shape
      TensorShape([1, 8, 8, 8])
    """

    @classmethod
    def from_float(cls, layer, **settings):
        """The QAT layer for a float DepthwiseConv2D `layer`; see _QuantConvolution.from_float."""
        return cls(layer.kernel_size, strides=layer.strides, padding=layer.padding,
                   depth_multiplier=layer.depth_multiplier, dilation_rate=layer.dilation_rate,
                   **settings)

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1,
                 dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.padding = padding.lower()
        self.depth_multiplier = int(depth_multiplier)
        self.dilation_rate = _pair(dilation_rate)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, input_shape[-1], self.depth_multiplier)

    def _out_channels(self, input_shape):
        return input_shape[-1] * self.depth_multiplier

    def _kernel_view(self, kernel):
        kh, kw, cin, mult = kernel.shape
        return tf.reshape(kernel, [kh, kw, cin * mult])

    def _linear(self, x, kernel_view):
        kh, kw = self.kernel_size
        kernel = tf.reshape(kernel_view, [kh, kw, -1, self.depth_multiplier])
        return tf.nn.depthwise_conv2d(
            x, kernel, strides=(1, *self.strides, 1), padding=self.padding.upper(),
            dilations=self.dilation_rate)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
                      depth_multiplier=self.depth_multiplier, dilation_rate=self.dilation_rate)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantDense(FusedQuantLayer):
    """Dense with quantized, optionally BN-folded weights.

    Per-channel weights run as a 1x1 convolution: in TF 2.21 the converter
    cannot carry a per-axis quantized kernel through FULLY_CONNECTED's weight
    transpose ("mismatched quantized axes"), but CONV_2D takes it. Per-tensor
    weights run as a plain [N', C] matmul (FULLY_CONNECTED, the bias fused).

    Example:
      >>> QuantDense(10)(tf.zeros([2, 16])).shape
      TensorShape([2, 10])
    """

    @classmethod
    def from_float(cls, layer, **settings):
        """The QAT layer for a float Dense `layer`; see _QuantConvolution.from_float."""
        return cls(layer.units, **settings)

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def _kernel_shape(self, input_shape):
        return (input_shape[-1], self.units)

    def _out_channels(self, input_shape):
        return self.units

    def _kernel_view(self, kernel):
        if self.per_channel:
            return tf.reshape(kernel, [1, 1, *kernel.shape])
        return kernel

    def _to_op_layout(self, inputs):
        if self.per_channel:
            return tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])
        # Per tensor on more than two axes, a [N', C] matmul too: from tensordot's 3-D form
        # the converter leaves a nonzero bias's ADD unfused and FULLY_CONNECTED float (TF 2.21;
        # found by the graph fuzzer).
        return tf.reshape(inputs, [-1, inputs.shape[-1]]) if len(inputs.shape) > 2 else inputs

    def _from_op_layout(self, outputs, inputs):
        if self.per_channel or len(inputs.shape) > 2:
            return _restore_leading_dims(outputs, inputs, self.units)
        return outputs

    def _linear(self, x, kernel_view):
        if self.per_channel:
            return tf.nn.conv2d(x, kernel_view, 1, "VALID")
        return tf.matmul(x, kernel_view)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantConv1D(_GroupedConvolution):
    """Conv1D (channels_last) with quantized, optionally BN-folded weights.

    Runs as a CONV_2D over a [N, 1, length, C] view of the input (TFLite has
    no 1-D convolution; the converter makes the same from a Keras Conv1D).
    "causal" padding pads the start of the sequence, then convolves "valid".

    Example:
      >>> layer = QuantConv1D(8, 3, padding="causal", activation="relu")
      >>> layer(tf.zeros([2, 10, 4])).shape
      TensorShape([2, 10, 8])
    """

    _spatial = staticmethod(lambda value: _single(value)[0])

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 groups=1, **kwargs):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, groups, **kwargs)
        if self.padding not in ("valid", "same", "causal"):
            raise ValueError(f"Layer '{self.name}': padding {padding!r} is not one of "
                             "'valid', 'same', 'causal'.")

    def _kernel_shape(self, input_shape):
        return (self.kernel_size, self._group_channels(input_shape), self.filters)

    def _kernel_view(self, kernel):
        return tf.reshape(kernel, [1, *kernel.shape])

    def _to_op_layout(self, inputs):
        if self.padding == "causal":
            inputs = tf.pad(inputs, [[0, 0], [self.dilation_rate * (self.kernel_size - 1), 0], [0, 0]])
        return tf.expand_dims(inputs, 1)

    def _from_op_layout(self, outputs, inputs):
        return tf.squeeze(outputs, 1)

    def _conv(self, inputs, kernel):
        padding = "VALID" if self.padding == "causal" else self.padding.upper()
        return tf.nn.conv2d(inputs, kernel, strides=(1, self.strides), padding=padding,
                            dilations=(1, self.dilation_rate))


def _grouped_conv(conv, groups, x, kernel):
    """conv(x, kernel) for a grouped kernel: one grouped Conv2D op (one CONV_2D in the .tflite).

    TF's CPU kernels have no gradient for a grouped Conv2D, so the gradient is taken
    through the same convolution written group by group (split, conv, concat), which
    computes the same values.
    """

    def by_group(inputs, weights):
        parts = zip(tf.split(inputs, groups, axis=-1), tf.split(weights, groups, axis=-1))
        return tf.concat([conv(part, w) for part, w in parts], axis=-1)

    @tf.custom_gradient
    def grouped(inputs, weights):
        def grad(upstream):
            with tf.GradientTape() as tape:
                tape.watch([inputs, weights])
                outputs = by_group(inputs, weights)
            return tape.gradient(outputs, [inputs, weights], output_gradients=upstream)
        return conv(inputs, weights), grad

    return grouped(x, kernel)


@keras.saving.register_keras_serializable(package="tfqat")
class QuantConv2DTranspose(_QuantConvolution):
    """Conv2DTranspose (channels_last) with quantized, optionally BN-folded weights.

    The Keras kernel is [kh, kw, out, in]; the kernel view puts the output
    channel last ([kh, kw, in, out]) for BN folding. Weights are quantized per
    tensor: TF 2.21's converter cannot carry a per-axis quantized kernel
    through the transpose in front of TRANSPOSE_CONV ("'tfl.transpose' op has
    mismatched quantized axes of input and output"), while a per-tensor
    kernel exports as one int8 TRANSPOSE_CONV with the bias fused.

    Example:
      >>> layer = QuantConv2DTranspose(4, 3, strides=2, padding="same")
      >>> layer(tf.zeros([1, 5, 5, 2])).shape
      TensorShape([1, 10, 10, 4])
    """

    @classmethod
    def from_float(cls, layer, **settings):
        """The QAT layer for a float Conv2DTranspose `layer`; see _QuantConvolution.from_float."""
        return cls(layer.filters, layer.kernel_size, strides=layer.strides,
                   padding=layer.padding, output_padding=layer.output_padding,
                   dilation_rate=layer.dilation_rate, **settings)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 dilation_rate=1, **kwargs):
        kwargs.setdefault("per_channel", False)
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, **kwargs)
        if self.per_channel:
            raise ValueError(
                f"Layer '{self.name}': Conv2DTranspose weights can only be quantized per tensor "
                "(per_channel=False); the TFLite converter cannot export a per-channel "
                "TRANSPOSE_CONV kernel.")
        self.output_padding = None if output_padding is None else _pair(output_padding)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, self.filters, input_shape[-1])

    def _container_bits(self):
        # TRANSPOSE_CONV has no int4 kernel (the converter fails on an i4 operand): fewer
        # bits are carried as int8 values on the weight_bits grid, the same values.
        return 8

    def _kernel_view(self, kernel):
        return tf.transpose(kernel, [0, 1, 3, 2])

    def _linear(self, x, kernel_view):
        return keras.ops.conv_transpose(
            x, tf.transpose(kernel_view, [0, 1, 3, 2]), strides=self.strides,
            padding=self.padding, output_padding=self.output_padding,
            dilation_rate=self.dilation_rate)

    def get_config(self):
        config = super().get_config()
        config.update(output_padding=self.output_padding)
        return config


class ChannelScaleLayer(FusedQuantLayer):
    """Base of the layers that scale each channel and add an offset: x * w[c] + b[c].

    They run as a 1x1 depthwise convolution, so TFLite keeps one int8 weight
    scale per channel; inputs of rank other than 4 are viewed as [N, 1, 1, C].
    The kernel view is [1, 1, C], the layout of a depthwise kernel view: the
    converter cannot reshape a per-axis quantized [C] into the [1, 1, C, 1]
    filter ("'tfl.reshape' op requires 'output' type ... to be cast
    compatible"), since that moves the quantized axis.
    """

    def _out_channels(self, input_shape):
        return input_shape[-1]

    def _kernel_view(self, kernel):
        return tf.reshape(kernel, [1, 1, -1])

    def _to_op_layout(self, inputs):
        if len(inputs.shape) == 4:
            return inputs
        return tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])

    def _from_op_layout(self, outputs, inputs):
        if len(inputs.shape) == 4:
            return outputs
        return _restore_leading_dims(outputs, inputs, self._channels)

    def _linear(self, x, kernel_view):
        kernel = tf.reshape(kernel_view, [1, 1, self._channels, 1])
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfqat")
class QuantBatchNormalization(ChannelScaleLayer):
    """A BatchNormalization that does not follow a conv, quantized as its own op.

    It is a per-channel scale (gamma / sigma_mv, fake-quantized like a weight)
    plus an offset, run as a 1x1 depthwise convolution so that TFLite keeps
    per-channel int8 scales. Training uses batch statistics and the same
    corrections as a folded BN. Pre-activation nets (ResNet50V2, DenseNet:
    BN -> ReLU -> Conv) use it with the ReLU fused.

    Example:
      >>> bn = QuantBatchNormalization(batchnorm={"epsilon": 1e-3, "momentum": 0.99})
      >>> bn(tf.zeros([2, 4, 4, 3])).shape
      TensorShape([2, 4, 4, 3])
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("use_bias", False)
        super().__init__(**kwargs)

    def _kernel_shape(self, input_shape):
        return None


@keras.saving.register_keras_serializable(package="tfqat")
class QuantRescaling(ChannelScaleLayer):
    """A fixed per-channel affine map x * scale + offset (Rescaling, Normalization).

    One int8 op (a 1x1 depthwise convolution) with a fake quant after it,
    where the converter would otherwise make MUL and ADD (or SUB and MUL) with
    an unquantized float tensor between them. Each channel's weight is one
    value, so its symmetric per-channel quantization is exact; the offset
    becomes the int32 bias. Not trainable: the map is preprocessing.

    Example:
      >>> layer = QuantRescaling()
      >>> layer.build((None, 4, 4, 3))
      >>> layer.load_affine(scale=[1 / 127.5] * 3, offset=[-1.0] * 3)
      >>> float(layer(tf.fill([1, 4, 4, 3], 255.0))[0, 0, 0, 0])
      1.0
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("use_bias", True)
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("kernel_initializer", "ones")
        super().__init__(**kwargs)

    def _kernel_shape(self, input_shape):
        return (input_shape[-1],)

    def load_affine(self, scale, offset):
        """Sets the per-channel scale and offset (arrays of the channel count)."""
        if not self.built:
            raise ValueError(f"QuantRescaling '{self.name}' is not built: call it on an input "
                             "(or build it with the input shape) before load_affine.")
        channels = self.kernel.shape[0]
        scale, offset = tf.convert_to_tensor(scale), tf.convert_to_tensor(offset)
        for what, values in (("scale", scale), ("offset", offset)):
            if tuple(values.shape) != (channels,):
                raise ValueError(
                    f"QuantRescaling '{self.name}': {what} has shape {tuple(values.shape)}, but "
                    f"the layer's input has {channels} channels. Pass one {what} per channel, "
                    f"shape ({channels},).")
        self.kernel.assign(tf.cast(scale, self.kernel.dtype))
        self.bias.assign(tf.cast(offset, self.bias.dtype))


@keras.saving.register_keras_serializable(package="tfqat")
class NearestUpSampling2D(keras.layers.Layer):
    """UpSampling2D(interpolation="nearest") as one nearest-neighbour resize.

    Keras's nearest UpSampling2D repeats rows and columns (`ops.repeat`); two
    in a row before a conv make TF 2.21's converter fail ("'tf.Conv2D' op is
    neither a custom op nor a flex op"). A resize to the static output size
    is one int8 RESIZE_NEAREST_NEIGHBOR with the same values (each output
    pixel is input pixel (i // size_h, j // size_w)), which keeps its input's
    scale.

    Example:
      >>> NearestUpSampling2D((2, 3))(tf.zeros([1, 4, 4, 2])).shape
      TensorShape([1, 8, 12, 2])
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = _pair(size)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            repeated = tf.repeat(inputs, self.size[0], axis=1)
            return tf.repeat(repeated, self.size[1], axis=2)
        return tf.image.resize(inputs, (height * self.size[0], width * self.size[1]),
                               method="nearest")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], c)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class CenterCropAtInference(keras.layers.Layer):
    """keras.layers.RandomCrop in training, a center crop (an int8 slice) at inference.

    Keras 3's RandomCrop crops an input larger than its target at a random offset in
    training (one offset per batch), a centered one when only one side is larger; at
    inference it returns its input uncropped, although it declares the cropped shape,
    so any size-dependent layer after it fails. This layer crops the center at inference
    (the declared shape; what Keras 2 did), which TFLite runs as one int8 STRIDED_SLICE
    that keeps its input's scale. An input smaller than the target (Keras resizes it) is
    refused: the resize has no fixed place in the inference graph.

    Example:
      >>> crop = CenterCropAtInference(4, 4, seed=1)
      >>> crop(tf.reshape(tf.range(36.0), [1, 6, 6, 1]))[0, :, :, 0].numpy()[0]
      array([ 7.,  8.,  9., 10.], dtype=float32)
    """

    def __init__(self, height, width, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None or \
                input_shape[1] < self.height or input_shape[2] < self.width:
            raise ValueError(
                f"RandomCrop '{self.name}' crops to {self.height}x{self.width}, and its input "
                f"has shape {tuple(input_shape)}; tfqat quantizes a RandomCrop of a batched "
                "channels-last image with a static size at least the target (a crop, an int8 "
                "slice). A smaller input is resized by Keras, and at inference Keras 3 does "
                "not crop at all. Leave it in float with QuantConfig(exclude=(...)), or crop "
                "or resize with Cropping2D/Resizing.")

    def call(self, inputs, training=None):
        height, width = inputs.shape[1], inputs.shape[2]
        if height == self.height and width == self.width:
            return inputs
        if training and height > self.height and width > self.width:
            top = keras.random.randint((), 0, height - self.height + 1, seed=self._seed_generator)
            left = keras.random.randint((), 0, width - self.width + 1, seed=self._seed_generator)
            cropped = tf.slice(inputs, tf.stack([0, top, left, 0]),
                               [-1, self.height, self.width, -1])
            return tf.ensure_shape(cropped, [None, self.height, self.width, inputs.shape[3]])
        top, left = (height - self.height) // 2, (width - self.width) // 2
        return inputs[:, top:top + self.height, left:left + self.width, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class ReshapeTrailingAxes(keras.layers.Layer):
    """Reshapes the last `num_axes` axes of its input to `dims`, the leading ones kept.

    A RESHAPE keeps the int8 scale. With static leading dimensions the target shape is
    static, so the .tflite has no SHAPE ops. (EinsumDense runs as Dense between two.)

    Example:
      >>> ReshapeTrailingAxes(2, (12,))(tf.zeros([2, 5, 3, 4])).shape
      TensorShape([2, 5, 12])
    """

    def __init__(self, num_axes, dims, **kwargs):
        super().__init__(**kwargs)
        self.num_axes = int(num_axes)
        self.dims = tuple(int(d) for d in dims)

    def call(self, inputs):
        leading = list(inputs.shape[1:-self.num_axes])
        if any(d is None for d in leading):
            shape = tf.shape(inputs)[:-self.num_axes]
            return tf.reshape(inputs, tf.concat([shape, self.dims], 0))
        return tf.reshape(inputs, [-1, *leading, *self.dims])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-self.num_axes], *self.dims)

    def get_config(self):
        config = super().get_config()
        config.update(num_axes=self.num_axes, dims=list(self.dims))
        return config


def _transpose_unless_identity(x, perm):
    return x if list(perm) == list(range(len(perm))) else tf.transpose(x, perm)


@keras.saving.register_keras_serializable(package="tfqat")
class QuantEinsumBatchMatMul(keras.layers.Layer):
    """An EinsumDense whose kernel has a weight per position of an input axis (such as
    'abc,bcd->abd'), as [TRANSPOSE,] RESHAPE, BATCH_MATMUL with a constant int8 operand
    broadcast over the batch, RESHAPE[, TRANSPOSE]: all int8 in TF 2.21's converter
    (checked), the batch axis first throughout. No bias (BATCH_MATMUL
    has none) and per-tensor weights (int8 BATCH_MATMUL takes one weight scale).

    The kernel is kept as [shared, contracted, kernel output] (each axis group flattened).

    Example:
      >>> layer = QuantEinsumBatchMatMul("abc,bcd->abd", (6, 4, 5))
      >>> layer(tf.zeros([2, 6, 4])).shape
      TensorShape([2, 6, 5])
    """

    def __init__(self, equation, kernel_shape, weight_bits=8, quant_delay=0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.equation = equation.replace(" ", "")
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.weight_bits = int(weight_bits)
        self.quant_delay = int(quant_delay)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        operands, self._output = self.equation.split("->")
        self._source, self._kernel_axes = operands.split(",")
        source, kernel, output = self._source, self._kernel_axes, self._output
        self._shared = "".join(c for c in source if c in kernel and c in output)
        self._contracted = "".join(c for c in source if c in kernel and c not in output)
        self._free = "".join(c for c in source if c not in kernel)  # the batch axis first
        self._kernel_out = "".join(c for c in output if c in kernel and c not in source)
        size = dict(zip(kernel, self.kernel_shape))
        self._sizes = size
        self.kernel_perm = tuple(kernel.index(c) for c in self._shared + self._contracted +
                                 self._kernel_out)
        self._matrix_shape = tuple(int(np.prod([size[c] for c in part])) for part in
                                   (self._shared, self._contracted, self._kernel_out))

    def build(self, input_shape):
        self._input_sizes = dict(zip(self._source, input_shape))
        self.kernel = self.add_weight(name="kernel", shape=self._matrix_shape,
                                      initializer=self.kernel_initializer)
        self.step = add_step_counter(self)

    def quantized_kernel(self, training=False):
        """FQ(kernel), per tensor: the BATCH_MATMUL's int8 constant in float."""
        quantize = lambda: fake_quant_weights(self.kernel, self.weight_bits, per_channel=False,
                                              container_bits=8)
        if not training:
            return quantize()
        return pass_through_during_delay(self.step.value, self.quant_delay, self.kernel, quantize)

    def call(self, inputs, training=None):
        training = bool(training)
        shared, batch, free, contracted = self._shared, self._free[0], self._free[1:], self._contracted
        # [batch, shared, free, contracted] times the [shared, contracted, out] constant,
        # broadcast over the batch: the batch axis stays first in every tensor.
        x = _transpose_unless_identity(
            inputs, [self._source.index(c) for c in batch + shared + free + contracted])
        inner = [self._input_sizes[c] for c in free]
        x = tf.reshape(x, [-1, self._matrix_shape[0], int(np.prod(inner)), self._matrix_shape[1]])
        y = tf.matmul(x, self.quantized_kernel(training))  # [batch, shared, free, out]
        y = tf.reshape(y, [-1, *(self._sizes[c] for c in shared), *inner,
                           *(self._sizes[c] for c in self._kernel_out)])
        made = batch + shared + free + self._kernel_out
        y = _transpose_unless_identity(y, [made.index(c) for c in self._output])
        if training:
            self.step.assign_add(1)
        return y

    def compute_output_shape(self, input_shape):
        sizes = {**dict(zip(self._source, input_shape)), **self._sizes}
        return tuple(sizes[c] for c in self._output)

    def get_config(self):
        config = super().get_config()
        config.update(equation=self.equation, kernel_shape=list(self.kernel_shape),
                      weight_bits=self.weight_bits, quant_delay=self.quant_delay,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
