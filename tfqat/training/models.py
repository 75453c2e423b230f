"""Small float Keras models for examples, tests and benchmarks.

They are Functional models built from keras.Input and use only layers that
`tfqat.quantize_model` quantizes, so each exports to an integer-only .tflite.
"""

from __future__ import annotations

import keras
from keras import layers


def lenet5(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """A LeNet-style CNN with BatchNorm after every hidden Conv2D/Dense (~55k params at 28x28).

    Example:
      >>> model = lenet5()
      >>> model.output_shape
      (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in ((1, 8), (2, 16)):
        # "same" padding keeps inputs as small as 8x8 (sklearn digits) valid.
        x = layers.Conv2D(filters, 5, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization(name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, use_bias=False, name="fc3")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.ReLU(name="relu3")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet5")


def small_resnet(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """A tiny residual net (~5k params): a stem, a residual block, a pointwise
    ReLU branch and a depthwise ReLU6 branch joined by Concatenate, a strided
    conv, global pooling and a softmax Dense.

    Example:
      >>> model = small_resnet()
      >>> model.output_shape
      (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    stem = layers.ReLU(name="stem_relu")(x)

    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="res_conv1")(stem)
    x = layers.BatchNormalization(name="res_bn1")(x)
    x = layers.ReLU(name="res_relu1")(x)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="res_conv2")(x)
    x = layers.BatchNormalization(name="res_bn2")(x)
    x = layers.Add(name="res_add")([stem, x])
    residual = layers.ReLU(name="res_relu")(x)

    # Two parallel branches joined by Concatenate.
    x = layers.Conv2D(8, 1, use_bias=False, name="pw_conv")(residual)
    x = layers.BatchNormalization(name="pw_bn")(x)
    pointwise = layers.ReLU(name="pw_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(residual)
    x = layers.BatchNormalization(name="dw_bn")(x)
    depthwise = layers.ReLU(max_value=6.0, name="dw_relu6")(x)
    x = layers.Concatenate(name="concat")([pointwise, depthwise])

    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


def _conv_bn_relu(x, filters, kernel, strides, name):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def convnet_bn(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """A plain VGG-style BN CNN: three conv-BN-ReLU stages (16/32/64), max pooling
    between them, global average pooling and a softmax Dense.

    Example:
      >>> convnet_bn().count_params() < 40_000
      True
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for stage, filters in enumerate((16, 32, 64), start=1):
        x = _conv_bn_relu(x, filters, 3, 1, name=f"block{stage}")
        if stage < 3:
            x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="convnet_bn")


def resnet8(input_shape=(32, 32, 3), num_classes=10) -> keras.Model:
    """The CIFAR-style ResNet-8: a 16-filter stem and three stages (16, 32, 64)
    of one basic block each, with 1x1 strided projection shortcuts.

    Example:
      >>> resnet8().output_shape
      (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_bn_relu(inputs, 16, 3, 1, name="stem")
    for stage, filters in enumerate((16, 32, 64), start=1):
        strides = 1 if stage == 1 else 2
        shortcut = x
        y = _conv_bn_relu(x, filters, 3, strides, name=f"stage{stage}_a")
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"stage{stage}_b_conv")(y)
        y = layers.BatchNormalization(name=f"stage{stage}_b_bn")(y)
        if strides != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                     name=f"stage{stage}_proj_conv")(shortcut)
            shortcut = layers.BatchNormalization(name=f"stage{stage}_proj_bn")(shortcut)
        x = layers.Add(name=f"stage{stage}_add")([shortcut, y])
        x = layers.ReLU(name=f"stage{stage}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet8")


def mobilenet_v1(input_shape=(32, 32, 3), num_classes=10, alpha=1.0) -> keras.Model:
    """keras.applications.MobileNet, untrained (weights=None)."""
    return keras.applications.MobileNet(input_shape=input_shape, alpha=alpha, weights=None,
                                        classes=num_classes)


def mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, alpha=1.0) -> keras.Model:
    """keras.applications.MobileNetV2, untrained (weights=None).

    Example:
      >>> mobilenet_v2((96, 96, 3), alpha=0.35).name
      'mobilenetv2_0.35_96'
    """
    return keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha, weights=None,
                                          classes=num_classes)


MODELS = {"lenet5": lenet5, "small_resnet": small_resnet, "convnet_bn": convnet_bn,
          "resnet8": resnet8, "mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2}
WIDTH_SCALED = ("mobilenet_v1", "mobilenet_v2")
MIN_SIZE = 32  # keras.applications' MobileNets need at least 32x32 RGB inputs


def required_input_shape(name: str, input_size: int | None, data_shape) -> tuple:
    """The (H, W, C) input a zoo model is built with for data of `data_shape`.

    Example:
      >>> required_input_shape("mobilenet_v2", None, (28, 28, 1))
      (32, 32, 3)
    """
    height, width, channels = data_shape
    if input_size is not None:
        height = width = int(input_size)
    if name in WIDTH_SCALED:
        return (max(height, MIN_SIZE), max(width, MIN_SIZE), 3)
    return (height, width, channels)


def build_model(name: str, input_shape=(28, 28, 1), num_classes=10, alpha=1.0) -> keras.Model:
    """Builds a float model of the zoo by name (see MODELS); `alpha` scales MobileNet widths.

    Example:
      >>> build_model("small_resnet", (8, 8, 1), 10).name
      'small_resnet'
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}, "
                         "or give the path of a saved float .keras model.")
    if name in WIDTH_SCALED:
        return MODELS[name](input_shape=input_shape, num_classes=num_classes, alpha=alpha)
    return MODELS[name](input_shape=input_shape, num_classes=num_classes)
