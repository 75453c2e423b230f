"""Rules for layers that act only in training (augmentation, noise, dropout variants,
activity regularization): copied as they are, so they still act in `fit`, and pass their
input through at inference, so the exported graph has no op for them."""

from __future__ import annotations

import keras

from tfqat.rewrite.rules.base import RewriteRule, Step, build_scale_preserving


# At inference each returns its input unchanged (checked in Keras 3: training=False is the
# identity), so the int8 tensor keeps its scale and needs no fake quant of its own.
# (Not RandomCrop: at inference it crops to its target size.)
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


RULES = (
    RewriteRule("inference_identity", (Step("layer", is_inference_identity),),
                build_scale_preserving, True),
)
