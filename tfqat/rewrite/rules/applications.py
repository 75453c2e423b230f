"""Rules for layers defined inside keras.applications: ConvNeXt's LayerScale (x * gamma per
channel) as a trainable per-channel int8 scale (a 1x1 DEPTHWISE_CONV_2D)."""

from __future__ import annotations

from tfqat.nn import layers as qlayers
from tfqat.rewrite.graph import defined_in_keras
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step


def is_layer_scale(layer) -> bool:
    """keras.applications.convnext's LayerScale (matched by class name and module, as Keras
    does not export it).

    Example:
      >>> block = keras.applications.ConvNeXtTiny(weights=None).get_layer("convnext_tiny_stage_0_block_0_layer_scale")
      >>> is_layer_scale(block), is_layer_scale(keras.layers.Dense(2))
      (True, False)
    """
    kind = type(layer)
    return kind.__name__ == "LayerScale" and defined_in_keras(layer, "applications")


def build_layer_scale(match, cfg) -> Replacement:
    """LayerScale as QuantRescaling without offset, trainable: one weight per channel, so
    per-channel quantization keeps it exact, whatever the config's per_channel."""
    scale = match["scale"]
    layer = qlayers.QuantRescaling(use_bias=False, trainable=scale.trainable,
                                   weight_bits=cfg.weight_bits, per_channel=True,
                                   quant_delay=cfg.quant_delay, name=scale.name)
    return Replacement([layer], TRACKED, lambda: layer.kernel.assign(scale.gamma))


RULES = (
    RewriteRule("layer_scale", (Step("scale", is_layer_scale),), build_layer_scale),
)
