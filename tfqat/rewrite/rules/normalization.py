"""Rules for normalization layers: LayerNormalization and RMSNormalization as their int8 op chain
(tfqat.nn.normalization.QuantLayerNormalization)."""

from __future__ import annotations

import keras

from tfqat.nn.normalization import QuantLayerNormalization
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


RULES = (
    RewriteRule("layer_normalization", (Step("norm", is_layer_normalization),),
                build_layer_normalization),
)
