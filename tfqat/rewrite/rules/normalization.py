"""Rules for normalization layers: LayerNormalization, RMSNormalization and GroupNormalization
as their int8 op chain (tfqat.nn.normalization.QuantLayerNormalization), UnitNormalization as
MUL, SUM, RSQRT, MUL (QuantUnitNormalization)."""

from __future__ import annotations

import keras

from tfqat.nn.normalization import (QuantGroupNormalization, QuantLayerNormalization,
                                    QuantUnitNormalization)
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step


def is_layer_normalization(layer) -> bool:
    """LayerNormalization or RMSNormalization (exact class)."""
    return type(layer) in (keras.layers.LayerNormalization, keras.layers.RMSNormalization)


def build_layer_normalization(match, cfg) -> Replacement:
    """LayerNormalization as MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (MUL, ADD), then a tracked
    fake quant.

    Example:
      >>> r = build_layer_normalization({"norm": keras.layers.LayerNormalization()},
      ...                               LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('QuantLayerNormalization', 'tracked')
    """
    norm = match["norm"]
    if type(norm) is keras.layers.RMSNormalization:
        epsilon = keras.config.epsilon() if norm.epsilon is None else norm.epsilon
        settings = dict(epsilon=epsilon, center=False, scale=True, rms_normalization=True)
    else:
        settings = dict(epsilon=norm.epsilon, center=norm.center, scale=norm.scale,
                        rms_scaling=norm.rms_scaling)
    layer = QuantLayerNormalization(
        axis=norm.axis, **settings, weight_bits=cfg.weight_bits,
        activation_bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
        quant_delay=cfg.quant_delay, name=norm.name)
    return Replacement([layer], TRACKED, lambda: layer.load_float_weights(norm))


def is_group_normalization(layer) -> bool:
    """GroupNormalization (exact class)."""
    return type(layer) is keras.layers.GroupNormalization


def build_group_normalization(match, cfg) -> Replacement:
    """GroupNormalization (channels last) as RESHAPE, the LayerNormalization chain per group,
    RESHAPE, MUL by gamma, ADD beta, then a tracked fake quant.

    Example:
      >>> r = build_group_normalization({"norm": keras.layers.GroupNormalization(2)},
      ...                               LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.layers[0].groups
      ('QuantGroupNormalization', 2)
    """
    norm = match["norm"]
    rank = norm.input_spec.ndim if norm.input_spec is not None else None
    if norm.axis != -1 and norm.axis != (rank or 0) - 1:
        raise ValueError(
            f"GroupNormalization '{norm.name}' normalizes groups along axis {norm.axis}; tfqat "
            "quantizes channels-last GroupNormalization (axis=-1) only. Use axis=-1, or leave "
            f"it in float with QuantConfig(exclude=('{norm.name}',)).")
    layer = QuantGroupNormalization(
        groups=norm.groups, epsilon=norm.epsilon, center=norm.center, scale=norm.scale,
        weight_bits=cfg.weight_bits, activation_bits=cfg.activation_bits,
        ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay, name=norm.name)
    return Replacement([layer], TRACKED, lambda: layer.load_float_weights(norm))


def is_unit_normalization(layer) -> bool:
    """UnitNormalization (exact class)."""
    return type(layer) is keras.layers.UnitNormalization


def build_unit_normalization(match, cfg) -> Replacement:
    """UnitNormalization as int8 MUL, SUM, RSQRT, MUL, then a tracked fake quant.

    Example:
      >>> r = build_unit_normalization({"norm": keras.layers.UnitNormalization()},
      ...                              LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('QuantUnitNormalization', 'tracked')
    """
    norm = match["norm"]
    layer = QuantUnitNormalization(
        axis=norm.axis, activation_bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
        quant_delay=cfg.quant_delay, name=norm.name)
    return Replacement([layer], TRACKED)


RULES = (
    RewriteRule("layer_normalization", (Step("norm", is_layer_normalization),),
                build_layer_normalization),
    RewriteRule("group_normalization", (Step("norm", is_group_normalization),),
                build_group_normalization),
    RewriteRule("unit_normalization", (Step("norm", is_unit_normalization),),
                build_unit_normalization),
)
