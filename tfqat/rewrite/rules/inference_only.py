"""Rules for layers that act only in training (augmentation, noise, dropout variants,
activity regularization): copied as they are, so they still act in `fit`, and pass their
input through at inference, so the exported graph has no op for them. RandomCrop acts in
training too, and crops the center at inference: an int8 slice that keeps the scale."""

from __future__ import annotations

import keras

from tfqat.nn.layers import CenterCropAtInference
from tfqat.rewrite.rules.base import (SCALE_PRESERVING, Replacement, RewriteRule, Step,
                                      _channels_last_check, build_scale_preserving)


# At inference each returns its input unchanged (checked in Keras 3: training=False is the
# identity), so the int8 tensor keeps its scale and needs no fake quant of its own.
# (Not RandomCrop: it changes the size; see build_random_crop.)
INFERENCE_IDENTITY_TYPES = (
    keras.layers.RandomFlip, keras.layers.RandomRotation, keras.layers.RandomZoom,
    keras.layers.RandomTranslation, keras.layers.RandomContrast, keras.layers.RandomBrightness,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D,
    keras.layers.ActivityRegularization,
)


def is_inference_identity(layer) -> bool:
    """A layer that acts in training only and is the identity at inference.

    Example:
      >>> is_inference_identity(keras.layers.RandomFlip()), is_inference_identity(keras.layers.Dense(2))
      (True, False)
    """
    return type(layer) in INFERENCE_IDENTITY_TYPES


def is_random_crop(layer) -> bool:
    """RandomCrop (exact class)."""
    return type(layer) is keras.layers.RandomCrop


def build_random_crop(match, cfg) -> Replacement:
    """RandomCrop as tfqat.nn.layers.CenterCropAtInference: Keras's random crop in training,
    the center crop (an int8 slice, no fake quant) at inference.

    Example:
      >>> r = build_random_crop({"layer": keras.layers.RandomCrop(4, 4)}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('CenterCropAtInference', 'none')
    """
    crop = match["layer"]
    _channels_last_check(crop)
    return Replacement([CenterCropAtInference(crop.height, crop.width, seed=crop.seed,
                                              name=crop.name)], SCALE_PRESERVING)


RULES = (
    RewriteRule("inference_identity", (Step("layer", is_inference_identity),),
                build_scale_preserving, True),
    RewriteRule("random_crop", (Step("layer", is_random_crop),), build_random_crop),
)
