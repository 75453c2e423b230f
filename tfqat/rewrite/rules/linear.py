"""Rules for convolutions and Dense: the linear op, an optional BatchNormalization folded
into it and an optional ReLU/ReLU6 fused after it, as one QAT layer."""

from __future__ import annotations

import keras

from tfqat.nn import layers as qlayers
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.rewrite.rules.activations import RELU_TAIL, activation_kind
from tfqat.rewrite.rules.base import (TRACKED, Replacement, RewriteRule, Step, _channels_last_check,
                                      clone_layer)


# The QAT class of each float linear layer (each has a `from_float` constructor).
QAT_CLASSES = {
    keras.layers.Conv2D: qlayers.QuantConv2D,
    keras.layers.Conv1D: qlayers.QuantConv1D,
    keras.layers.DepthwiseConv2D: qlayers.QuantDepthwiseConv2D,
    keras.layers.Dense: qlayers.QuantDense,
    keras.layers.Conv2DTranspose: qlayers.QuantConv2DTranspose,
}
LINEAR_TYPES = tuple(QAT_CLASSES)


SEPARABLE_TYPES = (keras.layers.SeparableConv2D,)


def is_linear(layer) -> bool:
    """Conv2D, DepthwiseConv2D, Dense, Conv1D or Conv2DTranspose (exact class)."""
    return type(layer) in LINEAR_TYPES


def is_separable(layer) -> bool:
    """SeparableConv2D (exact class), which becomes a depthwise and a pointwise conv."""
    return type(layer) in SEPARABLE_TYPES


def takes_activation_argument(layer) -> bool:
    """Layers whose `activation=` argument quantize_model splits off into its own layer.

    Example:
      >>> takes_activation_argument(keras.layers.SeparableConv2D(4, 3, activation="relu"))
      True
    """
    return is_linear(layer) or is_separable(layer) or type(layer) is keras.layers.EinsumDense


def is_batchnorm(layer) -> bool:
    """BatchNormalization (exact class)."""
    return type(layer) is keras.layers.BatchNormalization


def _batchnorm_settings(bn):
    if bn is None:
        return None
    rank = bn.input_spec.ndim if bn.input_spec is not None else None
    if bn.axis != -1 and bn.axis != (rank or 0) - 1:
        raise ValueError(
            f"BatchNormalization '{bn.name}' normalizes axis {bn.axis}; tfqat folds "
            "channels-last BN (axis=-1) only. Exclude it or use axis=-1.")
    if bn.renorm:
        raise ValueError(f"BatchNormalization '{bn.name}' uses renorm, which cannot be "
                         "folded. Exclude it or train without renorm.")
    return {"epsilon": bn.epsilon, "momentum": bn.momentum, "center": bn.center, "scale": bn.scale}


def _fused_settings(layer, bn, relu, cfg, per_channel=None):
    return dict(
        use_bias=layer.use_bias,
        activation=activation_kind(relu) if relu is not None else None,
        batchnorm=_batchnorm_settings(bn),
        weight_bits=cfg.weight_bits,
        per_channel=cfg.per_channel if per_channel is None else per_channel,
        quant_delay=cfg.quant_delay,
        bn_freeze_delay=cfg.bn_freeze_delay,
        bn_fold=cfg.bn_fold,
        name=layer.name,
    )


def _is_depthwise_as_grouped(layer) -> bool:
    """A Conv2D with one group per input channel (ConvNeXt's depthwise convolution)."""
    groups = getattr(layer, "groups", 1)
    return type(layer) is keras.layers.Conv2D and groups > 1 and \
        layer.kernel.shape[-2] == 1 and layer.filters % groups == 0


def _groups_check(layer):
    groups = getattr(layer, "groups", 1)
    # Conv1D and Conv2D run any groups as one grouped CONV_2D (QuantConv1D, QuantConv2D).
    if groups != 1 and type(layer) not in (keras.layers.Conv1D, keras.layers.Conv2D):
        raise ValueError(f"{type(layer).__name__} '{layer.name}' has groups={groups}; tfqat "
                         "quantizes groups on Conv1D and Conv2D only. Exclude the layer, or "
                         "write it as separate convolutions per group.")


def _depthwise_from_grouped(linear, bn, common) -> Replacement:
    # Conv2D(groups=C) output channel g * m + j reads input channel g with kernel[..., 0, g*m+j]:
    # DepthwiseConv2D(depth_multiplier=m)'s channel order, so the kernel is a reshape.
    multiplier = linear.filters // linear.groups
    fused = qlayers.QuantDepthwiseConv2D(
        linear.kernel_size, strides=linear.strides, padding=linear.padding,
        depth_multiplier=multiplier, dilation_rate=linear.dilation_rate, **common)

    def load():
        fused.load_float_weights(None, bn)
        fused.kernel.assign(keras.ops.reshape(linear.kernel, fused.kernel.shape))
        if fused.bias is not None:
            fused.bias.assign(linear.bias)

    return Replacement([fused], TRACKED, load)


def build_fused_linear(match, cfg) -> Replacement:
    """Conv2D/DepthwiseConv2D/Dense/Conv1D/Conv2DTranspose [+ BatchNormalization] [+ ReLU/ReLU6]."""
    linear, bn, relu = match["linear"], match.get("bn"), match.get("relu")
    _channels_last_check(linear)
    _groups_check(linear)
    if type(linear) is keras.layers.Conv2DTranspose:
        # Per tensor always: see QuantConv2DTranspose. A ReLU is not fused: with a zero or
        # absent bias (no BN, or BN with default statistics) the converter leaves
        # TRANSPOSE_CONV + RELU in float. The ReLU runs as its own int8 RELU instead.
        fused = qlayers.QuantConv2DTranspose.from_float(
            linear, **_fused_settings(linear, bn, None, cfg, per_channel=False))
        layers = [fused]
        if relu is not None:
            layers += [ActivationQuantizer(bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
                                           quant_delay=cfg.quant_delay, name=f"{linear.name}_fq"),
                       clone_layer(relu)]
        return Replacement(layers, TRACKED, lambda: fused.load_float_weights(linear, bn))
    common = _fused_settings(linear, bn, relu, cfg)
    if _is_depthwise_as_grouped(linear):
        return _depthwise_from_grouped(linear, bn, common)
    fused = QAT_CLASSES[type(linear)].from_float(linear, **common)
    return Replacement([fused], TRACKED, lambda: fused.load_float_weights(linear, bn))


def build_separable(match, cfg) -> Replacement:
    """SeparableConv2D [+ BatchNormalization] [+ ReLU/ReLU6] as two quantized ops.

    The depthwise part (no bias) gets its own fake quant, as the int8 tensor
    between DEPTHWISE_CONV_2D and CONV_2D; BN and ReLU fold into the 1x1
    pointwise conv, which keeps the layer's name.

    Example:
      >>> sep = keras.layers.SeparableConv2D(8, 3, name="sep")
      >>> [type(l).__name__ for l in build_separable({"separable": sep}, LayerQuantConfig()).layers]
      ['QuantDepthwiseConv2D', 'ActivationQuantizer', 'QuantConv2D']
    """
    separable, bn, relu = match["separable"], match.get("bn"), match.get("relu")
    _channels_last_check(separable)
    depthwise = qlayers.QuantDepthwiseConv2D(
        separable.kernel_size, strides=separable.strides, padding=separable.padding,
        depth_multiplier=separable.depth_multiplier, dilation_rate=separable.dilation_rate,
        use_bias=False, weight_bits=cfg.weight_bits, per_channel=cfg.per_channel,
        quant_delay=cfg.quant_delay, name=f"{separable.name}_depthwise")
    between = ActivationQuantizer(bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
                                  quant_delay=cfg.quant_delay, name=f"{separable.name}_depthwise_fq")
    pointwise = qlayers.QuantConv2D(separable.filters, 1, **_fused_settings(separable, bn, relu, cfg))

    def load():
        depthwise.kernel.assign(separable.depthwise_kernel)
        pointwise.kernel.assign(separable.pointwise_kernel)
        if pointwise.bias is not None:
            pointwise.bias.assign(separable.bias)
        pointwise.load_float_weights(None, bn)

    return Replacement([depthwise, between, pointwise], TRACKED, load)


def build_standalone_batchnorm(match, cfg) -> Replacement:
    """A BatchNormalization that follows no conv, [+ ReLU/ReLU6]."""
    bn, relu = match["bn"], match.get("relu")
    layer = qlayers.QuantBatchNormalization(
        activation=activation_kind(relu) if relu is not None else None,
        batchnorm=_batchnorm_settings(bn), weight_bits=cfg.weight_bits,
        per_channel=cfg.per_channel, quant_delay=cfg.quant_delay,
        bn_freeze_delay=cfg.bn_freeze_delay, name=bn.name)
    return Replacement([layer], TRACKED, lambda: layer.load_float_weights(None, bn))


BN_STEP = Step("bn", is_batchnorm, optional=True)


RULES = (
    RewriteRule("linear_bn_relu", (Step("linear", is_linear), BN_STEP, RELU_TAIL),
                build_fused_linear),
    RewriteRule("separable_bn_relu", (Step("separable", is_separable), BN_STEP, RELU_TAIL),
                build_separable),
    RewriteRule("batchnorm_relu", (Step("bn", is_batchnorm), RELU_TAIL),
                build_standalone_batchnorm),
)
