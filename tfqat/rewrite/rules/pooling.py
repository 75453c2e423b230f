"""Rules for pooling and shape ops: global average pooling (its own scale), ops that keep
their input scale (max pooling, reshapes, padding) and ops that round to it (average pooling,
bilinear resizing)."""

from __future__ import annotations

import keras

from tfqat.rewrite.rules.activations import RELU_TAIL, activation_kind
from tfqat.nn.layers import NearestUpSampling2D
from tfqat.rewrite.rules.base import (SCALE_PRESERVING, Replacement, RewriteRule, Step,
                                      build_same_scale, build_scale_preserving, build_tracked)


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


def is_global_average_pool(layer) -> bool:
    """GlobalAveragePooling1D/2D (TFLite MEAN, which has its own output scale)."""
    return type(layer) in GLOBAL_AVERAGE_POOL_TYPES


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


def is_nearest_upsampling(layer) -> bool:
    """UpSampling2D with nearest interpolation, channels last."""
    return (type(layer) is keras.layers.UpSampling2D and layer.interpolation == "nearest"
            and layer.data_format == "channels_last")


def build_nearest_upsampling(match, cfg) -> Replacement:
    """Nearest UpSampling2D as one nearest resize (see tfqat.nn.layers.NearestUpSampling2D)."""
    layer = match["op"]
    return Replacement([NearestUpSampling2D(layer.size, name=layer.name)], SCALE_PRESERVING)


GLOBAL_POOL_RULES = (
    RewriteRule("global_average_pool", (Step("pool", is_global_average_pool),), build_tracked,
                True),
)
SHAPE_RULES = (
    RewriteRule("nearest_upsampling", (Step("op", is_nearest_upsampling),),
                build_nearest_upsampling),
    RewriteRule("scale_preserving", (Step("op", is_scale_preserving),), build_scale_preserving,
                True),
    # A ReLU after the op keeps the input's scale too: the converter fuses it into
    # AVERAGE_POOL_2D, whose output scale must equal its input's (with a fake quant of the
    # ReLU's own, conversion fails: "violate the same scale constraint").
    RewriteRule("same_scale_op", (Step("op", is_same_scale_op), RELU_TAIL), build_same_scale,
                True),
)
