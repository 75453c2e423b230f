"""Rewrite rules: each is a pattern (a chain of layer predicates) plus a builder
that makes the quantized replacement. `quantize_model` tries them in order.

A chain continues to the next layer only when that layer is the sole consumer
of the previous output, so a fused tensor is never needed elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

from tfqat import layers as qlayers
from tfqat.activations import INNER_RANGES, QuantActivation
from tfqat.graph import TensorRef
from tfqat.quantizers import FIXED_RANGES, ActivationQuantizer


@dataclasses.dataclass(frozen=True)
class Step:
    """One position of a pattern: a named predicate on a layer."""

    name: str
    matches: Callable[[keras.layers.Layer], bool]
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class OutputQuant:
    """What follows the replacement: nothing, a tracked range or a fixed range."""

    kind: str  # "none" | "tracked" | "fixed" | "input"
    fixed_range: tuple | None = None


SCALE_PRESERVING = OutputQuant("none")
TRACKED = OutputQuant("tracked")
# The output is rounded to the input's scale: the input's quantizer is applied again (tied).
INPUT_SCALE = OutputQuant("input")


@dataclasses.dataclass
class Replacement:
    """Layers to call in a chain in place of the matched nodes.

    `load_weights` runs once the layers are built (they are built when the
    rebuilt graph calls them).
    """

    layers: list
    output: OutputQuant
    load_weights: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class RewriteRule:
    name: str
    pattern: tuple  # of Step
    build: Callable  # (match: dict[str, Layer | None], cfg: LayerQuantConfig) -> Replacement
    keeps_layers: bool = False  # the replacement is a copy of the matched Keras layers


# ---- predicates ----------------------------------------------------------

LINEAR_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
                keras.layers.Conv1D, keras.layers.Conv2DTranspose)
SEPARABLE_TYPES = (keras.layers.SeparableConv2D,)
# (Not Average: TFLite runs it as ADD then MUL, and the sum between them has no int8 scale.)
MERGE_TYPES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
               keras.layers.Concatenate)
# Keras ops recorded in a Functional graph (`x + 3.0`, `a * b`): ADD/SUB/MUL with a tensor or
# a scalar constant are int8 ops (the converter quantizes a constant operand itself); a
# division by a constant becomes MUL. TFLite has no int8 DIV, so any other division is
# refused (see divides_by_tensor).
ELEMENTWISE_OPS = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide")
DIVISION_OPS = ("Divide", "TrueDivide")
# GlobalAveragePooling is MEAN, which requantizes to its own output scale. (Windowed
# average pooling is not here: see is_same_scale_op.)
GLOBAL_AVERAGE_POOL_TYPES = (keras.layers.GlobalAveragePooling2D,
                             keras.layers.GlobalAveragePooling1D)
# AVERAGE_POOL_2D's int8 kernel needs its output scale equal to its input scale: with a fake
# quant after it the converter either adds a requantizing QUANTIZE or, as in DenseNet's
# transition blocks, fails ("'tfl.average_pool_2d' op quantization parameters violate the same
# scale constraint").
WINDOW_AVERAGE_POOL_TYPES = (keras.layers.AveragePooling2D, keras.layers.AveragePooling1D)
# GLOBAL_MAX_POOLING is REDUCE_MAX and Permute is TRANSPOSE: both keep the input's int8 scale
# (a fake quant after them only adds a requantizing QUANTIZE op).
SCALE_PRESERVING_TYPES = (keras.layers.MaxPooling2D, keras.layers.MaxPooling1D,
                          keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling1D,
                          keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute,
                          keras.layers.ZeroPadding2D, keras.layers.ZeroPadding1D,
                          keras.layers.Cropping2D, keras.layers.Cropping1D,
                          keras.layers.Dropout)
CHANNEL_AFFINE_TYPES = (keras.layers.Rescaling, keras.layers.Normalization)
# Activations that are one int8 TFLite op (LEAKY_RELU, HARD_SWISH, GELU), and those that
# tfqat.activations.QuantActivation builds from several int8 ops.
SINGLE_OP_ACTIVATIONS = ("leaky_relu", "hard_silu", "gelu")
DECOMPOSED_ACTIVATIONS = tuple(INNER_RANGES)


def keras_op_name(op) -> str | None:
    """The class name of a Keras numpy op recorded in a graph (`x + 3.0` is "Add"), else None.

    Example:
      >>> inp = keras.Input((4,))
      >>> graph = tfqat.graph.flatten_model(keras.Model(inp, inp + 3.0))
      >>> keras_op_name(graph.nodes[0].layer), keras_op_name(keras.layers.Add())
      ('Add', None)
    """
    if isinstance(op, keras.layers.Layer) or type(op).__module__ != "keras.src.ops.numpy":
        return None
    return type(op).__name__


def activation_kind(layer) -> str | None:
    """'relu', 'relu6', 'leaky_relu', 'softmax', 'sigmoid', 'tanh', 'linear', 'elu',
    'hard_sigmoid', 'hard_silu', 'silu', 'gelu' (any other Keras activation name for an
    Activation layer), or None."""
    if type(layer) is keras.layers.ReLU:
        if layer.threshold:
            return None
        if layer.max_value is None:
            return "leaky_relu" if layer.negative_slope else "relu"
        if layer.negative_slope:
            return None
        return "relu6" if float(layer.max_value) == 6.0 else None
    if type(layer) is keras.layers.LeakyReLU:
        return "leaky_relu"
    if type(layer) is keras.layers.ELU:
        return "elu" if float(layer.alpha) == 1.0 else None  # see tfqat.activations
    if type(layer) is keras.layers.Softmax:
        return "softmax" if layer.axis in (-1, [-1]) else None
    if type(layer) is keras.layers.Activation:
        name = keras.activations.serialize(layer.activation)
        return name if isinstance(name, str) else None
    return None


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
    return is_linear(layer) or is_separable(layer)


def is_batchnorm(layer) -> bool:
    """BatchNormalization (exact class)."""
    return type(layer) is keras.layers.BatchNormalization


def is_fusable_relu(layer) -> bool:
    """A ReLU or ReLU6 (layer or Activation), which TFLite fuses into the op before it."""
    return activation_kind(layer) in ("relu", "relu6")


def is_merge(layer) -> bool:
    """A merge layer (Add, Subtract, Multiply, Concatenate) or an elementwise Keras op."""
    return type(layer) in MERGE_TYPES or keras_op_name(layer) in ELEMENTWISE_OPS


def divides_by_tensor(node) -> bool:
    """Whether a graph node (tfqat.graph.Node) is a Keras division op that is not tensor / constant.

    Only a tensor divided by a constant is an int8 op (the converter makes it
    MUL by the reciprocal); `a / b` or `2.0 / x` is DIV, which TFLite runs in
    float only.

    Example:
      >>> inp = keras.Input((4,))
      >>> (node,) = tfqat.graph.flatten_model(keras.Model(inp, inp / inp)).nodes
      >>> divides_by_tensor(node)
      True
    """
    if keras_op_name(node.layer) not in DIVISION_OPS:
        return False
    operands = [*node.args, *(node.kwargs[key] for key in ("x1", "x2") if key in node.kwargs)]
    dividend, divisor = operands[:2]
    return not isinstance(dividend, TensorRef) or isinstance(divisor, TensorRef)


# Merge layers that TFLite runs as binary int8 ops: with more inputs, the converter chains
# them and the intermediate sums or products stay float.
BINARY_MERGE_TYPES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)


def merges_more_than_two(node) -> bool:
    """Whether a graph node is an Add/Multiply (or Subtract) of more than two tensors.

    Example:
      >>> a, b, c = (keras.Input((4,)) for _ in range(3))
      >>> model = keras.Model([a, b, c], keras.layers.Add()([a, b, c]))
      >>> merges_more_than_two(tfqat.graph.flatten_model(model).nodes[0])
      True
    """
    if type(node.layer) not in BINARY_MERGE_TYPES or not node.args:
        return False
    inputs = node.args[0]
    return isinstance(inputs, (list, tuple)) and len(inputs) > 2


def is_global_average_pool(layer) -> bool:
    """GlobalAveragePooling1D/2D (TFLite MEAN, which has its own output scale)."""
    return type(layer) in GLOBAL_AVERAGE_POOL_TYPES


def has_fixed_range(layer) -> bool:
    """softmax, sigmoid or tanh: TFLite fixes their int8 output range."""
    return activation_kind(layer) in FIXED_RANGES


def is_single_op_activation(layer) -> bool:
    """An activation that is one int8 TFLite op (LEAKY_RELU, HARD_SWISH, GELU)."""
    return activation_kind(layer) in SINGLE_OP_ACTIVATIONS


def is_decomposed_activation(layer) -> bool:
    """hard_sigmoid, silu or elu: int8 only as the op chain of tfqat.activations.QuantActivation."""
    return activation_kind(layer) in DECOMPOSED_ACTIVATIONS


def is_channel_affine(layer) -> bool:
    """Rescaling or Normalization (exact class): a fixed per-channel x * scale + offset."""
    return type(layer) in CHANNEL_AFFINE_TYPES


def is_scale_preserving(layer) -> bool:
    """Ops whose int8 TFLite form keeps its input's scale without computing new values."""
    if type(layer) is keras.layers.UpSampling2D:
        return layer.interpolation == "nearest"
    return type(layer) in SCALE_PRESERVING_TYPES or activation_kind(layer) == "linear"


def is_resize(layer) -> bool:
    """Bilinear UpSampling2D, and Resizing with nearest/bilinear and no crop or pad.

    TFLite's int8 RESIZE_BILINEAR needs its output scale equal to its input
    scale (a fake quant after it only adds a requantizing QUANTIZE op).
    """
    if type(layer) is keras.layers.UpSampling2D:
        return layer.interpolation == "bilinear"
    return (type(layer) is keras.layers.Resizing and layer.interpolation in ("nearest", "bilinear")
            and not layer.crop_to_aspect_ratio and not layer.pad_to_aspect_ratio)


def is_same_scale_op(layer) -> bool:
    """Ops that compute but whose int8 TFLite kernel keeps the input's scale.

    RESIZE_BILINEAR and AVERAGE_POOL_2D average int8 values and round the
    result to the input's scale; the output stays within the input's range.
    Their output is fake-quantized by the input's own quantizer (tied), so the
    QAT model rounds where the .tflite rounds. Without that rounding, a
    per-channel op after the pool (DenseNet's BN after each transition)
    magnifies the half-LSB difference to tens of LSBs.

    Example:
      >>> is_same_scale_op(keras.layers.AveragePooling2D(2)), is_same_scale_op(keras.layers.Dense(2))
      (True, False)
    """
    return is_resize(layer) or type(layer) in WINDOW_AVERAGE_POOL_TYPES


# ---- builders ------------------------------------------------------------

def clone_layer(layer):
    """A fresh layer of the same class and config (weights are copied later)."""
    return type(layer).from_config(layer.get_config())


def _copy_weights(pairs):
    def load():
        for new, old in pairs:
            if isinstance(old, keras.layers.Layer):  # Keras ops have no weights
                new.set_weights(old.get_weights())
    return load


def _channels_last_check(layer):
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format != "channels_last":
        raise ValueError(
            f"Layer '{layer.name}' uses data_format={data_format!r}; tfqat supports "
            "channels_last only. Rebuild the model channels_last, or exclude the layer.")


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
        name=layer.name,
    )


def _groups_check(layer):
    groups = getattr(layer, "groups", 1)
    if groups != 1:
        raise ValueError(f"{type(layer).__name__} '{layer.name}' has groups={groups}; tfqat "
                         "quantizes groups=1 only. Exclude the layer.")


def build_fused_linear(match, cfg) -> Replacement:
    """Conv2D/DepthwiseConv2D/Dense/Conv1D/Conv2DTranspose [+ BatchNormalization] [+ ReLU/ReLU6]."""
    linear, bn, relu = match["linear"], match.get("bn"), match.get("relu")
    _channels_last_check(linear)
    _groups_check(linear)
    kind = type(linear)
    if kind is keras.layers.Conv2DTranspose:
        # Per tensor always: see QuantConv2DTranspose.
        common = _fused_settings(linear, bn, relu, cfg, per_channel=False)
        fused = qlayers.QuantConv2DTranspose(
            linear.filters, linear.kernel_size, strides=linear.strides, padding=linear.padding,
            output_padding=linear.output_padding, dilation_rate=linear.dilation_rate, **common)
        return Replacement([fused], TRACKED, lambda: fused.load_float_weights(linear, bn))
    common = _fused_settings(linear, bn, relu, cfg)
    if kind is keras.layers.Conv2D:
        fused = qlayers.QuantConv2D(
            linear.filters, linear.kernel_size, strides=linear.strides, padding=linear.padding,
            dilation_rate=linear.dilation_rate, **common)
    elif kind is keras.layers.Conv1D:
        fused = qlayers.QuantConv1D(
            linear.filters, linear.kernel_size, strides=linear.strides, padding=linear.padding,
            dilation_rate=linear.dilation_rate, **common)
    elif kind is keras.layers.DepthwiseConv2D:
        fused = qlayers.QuantDepthwiseConv2D(
            linear.kernel_size, strides=linear.strides, padding=linear.padding,
            depth_multiplier=linear.depth_multiplier, dilation_rate=linear.dilation_rate, **common)
    else:
        fused = qlayers.QuantDense(linear.units, **common)
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


def _clone_chain(match, output):
    originals = [layer for layer in match.values() if layer is not None]
    clones = [clone_layer(layer) for layer in originals]
    return Replacement(clones, output, _copy_weights(list(zip(clones, originals))))


def build_tracked(match, cfg) -> Replacement:
    """The same layers, with a tracked-range fake quant on the output."""
    return _clone_chain(match, TRACKED)


def build_scale_preserving(match, cfg) -> Replacement:
    """The same layer; its output keeps its input's scale, so no fake quant."""
    return _clone_chain(match, SCALE_PRESERVING)


def build_same_scale(match, cfg) -> Replacement:
    """The same layer; its output is rounded to its input's scale (see is_same_scale_op)."""
    return _clone_chain(match, INPUT_SCALE)


def build_fixed_range(match, cfg) -> Replacement:
    """softmax/sigmoid/tanh: the output range TFLite's int8 kernels fix."""
    kind = activation_kind(match["activation"])
    return _clone_chain(match, OutputQuant("fixed", FIXED_RANGES[kind]))


def build_decomposed_activation(match, cfg) -> Replacement:
    """hard_sigmoid/silu/elu: the int8 ops TFLite runs, then a tracked fake quant.

    Example:
      >>> r = build_decomposed_activation({"activation": keras.layers.ELU()}, LayerQuantConfig())
      >>> r.layers[0].kind, r.output.kind
      ('elu', 'tracked')
    """
    layer = match["activation"]
    activation = QuantActivation(activation_kind(layer), bits=cfg.activation_bits,
                                 quant_delay=cfg.quant_delay, name=layer.name)
    return Replacement([activation], TRACKED)


def _channel_affine(layer):
    """(scale, offset) of a Rescaling or a channels-last Normalization, per channel or scalar."""
    if type(layer) is keras.layers.Rescaling:
        scale, offset = np.asarray(layer.scale, "float64"), np.asarray(layer.offset, "float64")
    else:
        mean = np.asarray(layer.mean, "float64")
        if mean.size != mean.shape[-1]:
            raise ValueError(
                f"Normalization '{layer.name}' normalizes axis {layer.axis}; tfqat quantizes a "
                "per-channel (axis=-1) Normalization only. Exclude it or use axis=-1.")
        sigma = np.maximum(np.sqrt(np.asarray(layer.variance, "float64")), keras.backend.epsilon())
        scale, offset = (sigma, mean) if layer.invert else (1.0 / sigma, -mean / sigma)
    if scale.ndim > 1 and scale.size != scale.shape[-1] or offset.ndim > 1 and offset.size != offset.shape[-1]:
        raise ValueError(f"{type(layer).__name__} '{layer.name}' does not scale per channel "
                         "(channels last); tfqat cannot quantize it. Exclude it.")
    return scale.reshape(-1), offset.reshape(-1)


def build_channel_affine(match, cfg) -> Replacement:
    """Rescaling/Normalization (one, or two in a row) [+ ReLU/ReLU6] as one QuantRescaling.

    The converter makes a Rescaling with an offset into MUL and ADD with a
    float tensor between them (and Normalization into SUB and MUL), so they do
    not become int8; one per-channel affine op does.

    Example:
      >>> r = build_channel_affine({"affine": keras.layers.Rescaling(1 / 255)}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__
      'QuantRescaling'
    """
    first, second, relu = match["affine"], match.get("affine2"), match.get("relu")
    _channels_last_check(first)
    scale, offset = _channel_affine(first)
    if second is not None:
        scale2, offset2 = _channel_affine(second)
        sizes = {scale.size, offset.size, scale2.size, offset2.size} - {1}
        if len(sizes) > 1:
            raise ValueError(
                f"{type(first).__name__} '{first.name}' and {type(second).__name__} "
                f"'{second.name}' scale different numbers of channels ({sorted(sizes)}); tfqat "
                "cannot combine them into one per-channel op. Exclude them.")
        scale, offset = scale * scale2, offset * scale2 + offset2
    # Per channel whatever the config: each channel's weight is one value, so per-channel
    # quantization keeps the map exact (per tensor, all but the largest scale get rounded).
    layer = qlayers.QuantRescaling(
        activation=activation_kind(relu) if relu is not None else None,
        weight_bits=cfg.weight_bits, per_channel=True, quant_delay=cfg.quant_delay,
        name=first.name)

    def load():
        channels = layer.kernel.shape[0]
        if {scale.size, offset.size} - {1, channels}:
            names = " and ".join(f"{type(l).__name__} '{l.name}'" for l in (first, second)
                                 if l is not None)
            raise ValueError(
                f"{names} {'have' if second is not None else 'has'} "
                f"{max(scale.size, offset.size)} per-channel values but the input has "
                f"{channels} channels; tfqat maps each input channel to one output channel "
                "(no broadcasting to more channels). Give it one value per input channel (or a "
                "scalar), or exclude it.")
        layer.load_affine(np.broadcast_to(scale, [channels]), np.broadcast_to(offset, [channels]))

    return Replacement([layer], TRACKED, load)


RELU_TAIL = Step("relu", is_fusable_relu, optional=True)
BN_STEP = Step("bn", is_batchnorm, optional=True)

RULES = (
    RewriteRule("linear_bn_relu", (Step("linear", is_linear), BN_STEP, RELU_TAIL),
                build_fused_linear),
    RewriteRule("separable_bn_relu", (Step("separable", is_separable), BN_STEP, RELU_TAIL),
                build_separable),
    RewriteRule("batchnorm_relu", (Step("bn", is_batchnorm), RELU_TAIL),
                build_standalone_batchnorm),
    RewriteRule("channel_affine",
                (Step("affine", is_channel_affine), Step("affine2", is_channel_affine, optional=True),
                 RELU_TAIL),
                build_channel_affine),
    RewriteRule("merge_relu", (Step("merge", is_merge), RELU_TAIL), build_tracked, True),
    RewriteRule("global_average_pool", (Step("pool", is_global_average_pool),), build_tracked,
                True),
    RewriteRule("relu", (Step("relu", is_fusable_relu),), build_tracked, True),
    RewriteRule("single_op_activation", (Step("activation", is_single_op_activation),),
                build_tracked, True),
    RewriteRule("decomposed_activation", (Step("activation", is_decomposed_activation),),
                build_decomposed_activation),
    RewriteRule("fixed_range_activation", (Step("activation", has_fixed_range),),
                build_fixed_range, True),
    RewriteRule("scale_preserving", (Step("op", is_scale_preserving),), build_scale_preserving,
                True),
    RewriteRule("same_scale_op", (Step("op", is_same_scale_op),), build_same_scale, True),
)


def runs_quantized(layer, rules=RULES) -> bool:
    """Whether `layer`, found in a QAT model, is a quantized op rather than a float one.

    Copies of Keras layers are quantized by the fake quants around them; Keras
    layers that a rule would have replaced (or that no rule handles) were
    excluded and are float.
    """
    if isinstance(layer, (qlayers.FusedQuantLayer, ActivationQuantizer, QuantActivation,
                          keras.layers.InputLayer)):
        return True
    return any(rule.keeps_layers and rule.pattern[0].matches(layer) for rule in rules)
