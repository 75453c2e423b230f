"""Rules for activation layers: fusable ReLU/ReLU6, single-op int8 activations, the
decomposed ones (hard_sigmoid, silu, elu) and the fixed-range ones (softmax, sigmoid, tanh)."""

from __future__ import annotations

import keras

from tfqat.nn.activations import INNER_RANGES, QuantActivation, QuantPReLU
from tfqat.nn.quantizers import FIXED_RANGES
from tfqat.rewrite.rules.base import TRACKED, OutputQuant, Replacement, RewriteRule, Step, _clone_chain, build_tracked


# Activations that are one int8 TFLite op (LEAKY_RELU, HARD_SWISH, GELU), and those that
# tfqat.nn.activations.QuantActivation builds from several int8 ops.
SINGLE_OP_ACTIVATIONS = ("leaky_relu", "hard_silu", "gelu")


DECOMPOSED_ACTIVATIONS = tuple(INNER_RANGES)


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
        return "elu" if float(layer.alpha) == 1.0 else None  # see tfqat.nn.activations
    if type(layer) is keras.layers.Softmax:
        # One axis, any position: TF runs a softmax over another axis as TRANSPOSE, SOFTMAX,
        # TRANSPOSE, all int8 (the transposes keep SOFTMAX's fixed output scale).
        axis = layer.axis
        return "softmax" if isinstance(axis, int) or len(axis) == 1 else None
    if type(layer) is keras.layers.Activation:
        name = keras.activations.serialize(layer.activation)
        return name if isinstance(name, str) else None
    return None


def is_fusable_relu(layer) -> bool:
    """A ReLU or ReLU6 (layer or Activation), which TFLite fuses into the op before it."""
    return activation_kind(layer) in ("relu", "relu6")


def has_fixed_range(layer) -> bool:
    """softmax, sigmoid or tanh: TFLite fixes their int8 output range."""
    return activation_kind(layer) in FIXED_RANGES


def is_single_op_activation(layer) -> bool:
    """An activation that is one int8 TFLite op (LEAKY_RELU, HARD_SWISH, GELU)."""
    return activation_kind(layer) in SINGLE_OP_ACTIVATIONS


def is_decomposed_activation(layer) -> bool:
    """hard_sigmoid, silu or elu: int8 only as the op chain of tfqat.nn.activations.QuantActivation."""
    return activation_kind(layer) in DECOMPOSED_ACTIVATIONS


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


def is_prelu(layer) -> bool:
    """PReLU (exact class): one int8 PRELU (see tfqat.nn.activations.QuantPReLU)."""
    return type(layer) is keras.layers.PReLU


def build_prelu(match, cfg) -> Replacement:
    """PReLU with alpha on the converter's int8 grid, then a tracked fake quant.

    Example:
      >>> r = build_prelu({"activation": keras.layers.PReLU(shared_axes=[1, 2])}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.layers[0].shared_axes, r.output.kind
      ('QuantPReLU', [1, 2], 'tracked')
    """
    prelu = match["activation"]
    layer = QuantPReLU(shared_axes=prelu.shared_axes, quant_delay=cfg.quant_delay,
                       alpha_regularizer=prelu.alpha_regularizer,
                       alpha_constraint=prelu.alpha_constraint, name=prelu.name)
    return Replacement([layer], TRACKED, lambda: layer.alpha.assign(prelu.alpha))


RELU_TAIL = Step("relu", is_fusable_relu, optional=True)


RULES = (
    RewriteRule("relu", (Step("relu", is_fusable_relu),), build_tracked, True),
    RewriteRule("single_op_activation", (Step("activation", is_single_op_activation),),
                build_tracked, True),
    RewriteRule("decomposed_activation", (Step("activation", is_decomposed_activation),),
                build_decomposed_activation),
    RewriteRule("prelu", (Step("activation", is_prelu),), build_prelu),
    RewriteRule("fixed_range_activation", (Step("activation", has_fixed_range),),
                build_fixed_range, True),
)
