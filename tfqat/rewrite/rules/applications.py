"""Rules for layers defined inside keras.applications: ConvNeXt's LayerScale (x * gamma per
channel) as a trainable per-channel int8 scale (a 1x1 DEPTHWISE_CONV_2D), and
Inception-ResNet's CustomScaleLayer (x + r * scale) as int8 MUL and ADD."""

from __future__ import annotations

from tfqat.nn import layers as qlayers
from tfqat.nn.residual import QuantScaledAdd
from tfqat.rewrite.graph import defined_in_keras
from tfqat.rewrite.rules.activations import RELU_TAIL
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step, clone_layer


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


def is_custom_scale(layer) -> bool:
    """keras.applications.inception_resnet_v2's CustomScaleLayer (`x[0] + x[1] * scale`),
    matched by class name and module as Keras does not export it.

    Example:
      >>> model = keras.applications.InceptionResNetV2(input_shape=(75, 75, 3), weights=None)
      >>> is_custom_scale(model.get_layer("custom_scale_layer"))
      True
    """
    return type(layer).__name__ == "CustomScaleLayer" and defined_in_keras(layer, "applications")


def build_custom_scale(match, cfg) -> Replacement:
    """CustomScaleLayer [+ ReLU] as QuantScaledAdd (MUL by the constant, fake quant, ADD)
    [+ the ReLU, which TFLite fuses into the ADD], then a tracked fake quant.

    Example:
      >>> r = build_custom_scale({"scale": custom_scale_layer, "relu": None}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('QuantScaledAdd', 'tracked')
    """
    custom = match["scale"]
    layers = [QuantScaledAdd(custom.scale, weight_bits=cfg.weight_bits,
                             activation_bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
                             quant_delay=cfg.quant_delay, name=custom.name)]
    if match.get("relu") is not None:
        layers.append(clone_layer(match["relu"]))
    return Replacement(layers, TRACKED)


RULES = (
    RewriteRule("layer_scale", (Step("scale", is_layer_scale),), build_layer_scale),
    RewriteRule("custom_scale", (Step("scale", is_custom_scale), RELU_TAIL), build_custom_scale),
)
