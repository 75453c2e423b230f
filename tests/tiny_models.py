"""Small float models shared by the tests."""

import keras
import numpy as np


def mixed_model(input_shape=(12, 12, 1), num_classes=4):
    """Conv-BN-ReLU, a depthwise branch, Add+ReLU, pooling, Dense-BN-ReLU, softmax."""
    inp = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.BatchNormalization(name="bn_dw")(y)
    y = keras.layers.ReLU(6.0, name="relu6_dw")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.ReLU(name="relu_add")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(16, name="fc")(x)
    x = keras.layers.BatchNormalization(name="bn_fc")(x)
    x = keras.layers.ReLU(name="relu_fc")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="mixed")


def randomize_batchnorm(model, seed=0):
    """Gives every BatchNormalization non-trivial statistics, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, c).astype("float32"))
    return model


def random_images(n=32, shape=(12, 12, 1), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def calibrate_quantizers(qat_model, x):
    """Initializes every activation range from `x` without changing weights or BN state."""
    from tfqat.nn.quantizers import ActivationQuantizer

    trainable = {}
    for layer in qat_model.layers:
        if not isinstance(layer, ActivationQuantizer):
            trainable[layer.name] = layer.trainable
            layer.trainable = False  # fused BN layers then use moving statistics
    qat_model(x, training=True)
    for layer in qat_model.layers:
        if layer.name in trainable:
            layer.trainable = trainable[layer.name]
