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


def encoder_block(x, num_heads, mlp_dim, name, causal=False):
    """A pre-LN transformer encoder block: LN -> MultiHeadAttention -> residual add,
    LN -> Dense(gelu) -> Dense -> residual add."""
    dim = x.shape[-1]
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(num_heads, dim // num_heads, name=f"{name}_mha")(
        y, y, use_causal_mask=causal)
    x = layers.Add(name=f"{name}_res1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    y = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(y)
    y = layers.Dense(dim, name=f"{name}_mlp2")(y)
    return layers.Add(name=f"{name}_res2")([x, y])


def vit_tiny(input_shape=(32, 32, 3), num_classes=10, dim=32, depth=4, num_heads=2,
             patch_size=None) -> keras.Model:
    """A small Vision Transformer: strided-conv patch embedding, learned position embedding,
    `depth` pre-LN encoder blocks (MHA + GELU MLP), final LN, mean pooling, softmax Dense.

    Patches are 4x4 (2x2 for inputs under 16 pixels). Every layer quantizes to int8.

    Example:
      >>> model = vit_tiny()
      >>> model.output_shape, model.get_layer("patches").strides
      ((None, 10), (4, 4))
    """
    from tfqat.nn.embedding import PositionEmbedding

    patch = patch_size or (4 if min(input_shape[:2]) >= 16 else 2)
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(dim, patch, strides=patch, name="patches")(inputs)
    x = layers.Reshape((-1, dim), name="tokens")(x)
    x = PositionEmbedding(name="positions")(x)
    for index in range(depth):
        x = encoder_block(x, num_heads, 2 * dim, name=f"block{index + 1}")
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="vit_tiny")


def text_transformer(sequence_length=32, vocab_size=1000, num_classes=2, dim=32, depth=2,
                     num_heads=2, causal=False) -> keras.Model:
    """A small text classifier: token Embedding, learned position embedding, `depth` pre-LN
    encoder blocks, final LN, mean pooling, softmax Dense. Input: int32 token ids.

    Example:
      >>> model = text_transformer(16, vocab_size=100)
      >>> model.input.dtype, model.output_shape
      ('int32', (None, 2))
    """
    from tfqat.nn.embedding import PositionEmbedding

    inputs = keras.Input(shape=(sequence_length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab_size, dim, name="embedding")(inputs)
    x = PositionEmbedding(name="positions")(x)
    for index in range(depth):
        x = encoder_block(x, num_heads, 2 * dim, name=f"block{index + 1}", causal=causal)
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="text_transformer")


def _keyword_spotter(kind, input_shape, num_classes, units, filters, name):
    inputs = keras.Input(shape=input_shape, name="spectrogram")
    # Rows are time frames, the rest one frame's features (MFCCs x channels).
    x = layers.Reshape((input_shape[0], -1), name="frames")(inputs)
    x = layers.Conv1D(filters, 3, strides=2, padding="same", activation="relu",
                      name="frontend")(x)
    x = getattr(layers, kind)(units, name=kind.lower())(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def kws_gru(input_shape=(49, 10, 1), num_classes=12, units=32, filters=24) -> keras.Model:
    """A small keyword spotter: spectrogram frames (rows) -> strided Conv1D front end ->
    GRU -> softmax Dense. (49, 10, 1) is Speech Commands' 49 frames of 10 MFCCs, as in
    MLPerf Tiny's KWS task; any (frames, features, channels) input works (tfqat-train's
    offline image datasets are read row by row). The GRU exports as int8 ops unrolled
    over the frames (tfqat.nn.recurrent).

    Example:
      >>> model = kws_gru()
      >>> model.output_shape, model.get_layer("gru").units
      ((None, 12), 32)
    """
    return _keyword_spotter("GRU", input_shape, num_classes, units, filters, "kws_gru")


def kws_lstm(input_shape=(49, 10, 1), num_classes=12, units=32, filters=24) -> keras.Model:
    """kws_gru with an LSTM in place of the GRU.

    Example:
      >>> kws_lstm((28, 28, 1), num_classes=10).output_shape
      (None, 10)
    """
    return _keyword_spotter("LSTM", input_shape, num_classes, units, filters, "kws_lstm")


MODELS = {"lenet5": lenet5, "small_resnet": small_resnet, "convnet_bn": convnet_bn,
          "resnet8": resnet8, "mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2,
          "vit_tiny": vit_tiny, "kws_gru": kws_gru, "kws_lstm": kws_lstm}
# Models on token sequences: not in MODELS, as tfqat-train's datasets are images.
SEQUENCE_MODELS = {"text_transformer": text_transformer}
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
