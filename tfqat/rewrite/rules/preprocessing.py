"""Rules for preprocessing layers: Rescaling and Normalization, as one per-channel affine op."""

from __future__ import annotations

import keras
import numpy as np

from tfqat.nn import layers as qlayers
from tfqat.rewrite.rules.activations import RELU_TAIL, activation_kind
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step, _channels_last_check


CHANNEL_AFFINE_TYPES = (keras.layers.Rescaling, keras.layers.Normalization)


def is_channel_affine(layer) -> bool:
    """Rescaling or Normalization (exact class): a fixed per-channel x * scale + offset."""
    return type(layer) in CHANNEL_AFFINE_TYPES


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


RULES = (
    RewriteRule("channel_affine",
                (Step("affine", is_channel_affine), Step("affine2", is_channel_affine, optional=True),
                 RELU_TAIL),
                build_channel_affine),
)
