"""Helpers shared by the tfqat side (bench/run.py) and the TFMOT side (bench/tfmot_worker.py).

Nothing here imports tfqat, TensorFlow or Keras at module level: the Keras
module is passed in, so the same code builds and trains a model in Keras 3
(tfqat's process) and in tf_keras (TFMOT's process).
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
import time

import numpy as np

# Architectures the TFMOT side can rebuild. The first three mirror tfqat.training.models
# layer for layer (bench/run.py checks that they still match).
ARCHITECTURES = ("lenet5", "convnet_bn", "resnet8", "mobilenet_v2", "resnet50")


def build(keras, name, input_shape, num_classes=10, alpha=1.0):
    """A float model of `name` built with the given Keras module (keras or tf_keras).

    Example:
      >>> import keras
      >>> build(keras, "lenet5", (28, 28, 1)).name
      'lenet5'
    """
    layers = keras.layers
    input_shape = tuple(input_shape)
    if name == "mobilenet_v2":
        return keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha, weights=None,
                                              classes=num_classes)
    if name == "resnet50":
        return keras.applications.ResNet50(input_shape=input_shape, weights=None,
                                           classes=num_classes)
    inputs = keras.Input(shape=input_shape, name="image")

    def conv_bn_relu(x, filters, kernel, strides, prefix):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(name=f"{prefix}_bn")(x)
        return layers.ReLU(name=f"{prefix}_relu")(x)

    if name == "lenet5":
        x = inputs
        for index, filters in ((1, 8), (2, 16)):
            x = layers.Conv2D(filters, 5, padding="same", use_bias=False, name=f"conv{index}")(x)
            x = layers.BatchNormalization(name=f"bn{index}")(x)
            x = layers.ReLU(name=f"relu{index}")(x)
            x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(64, use_bias=False, name="fc3")(x)
        x = layers.BatchNormalization(name="bn3")(x)
        x = layers.ReLU(name="relu3")(x)
    elif name == "convnet_bn":
        x = inputs
        for stage, filters in enumerate((16, 32, 64), start=1):
            x = conv_bn_relu(x, filters, 3, 1, f"block{stage}")
            if stage < 3:
                x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif name == "resnet8":
        x = conv_bn_relu(inputs, 16, 3, 1, "stem")
        for stage, filters in enumerate((16, 32, 64), start=1):
            strides = 1 if stage == 1 else 2
            shortcut = x
            y = conv_bn_relu(x, filters, 3, strides, f"stage{stage}_a")
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"stage{stage}_b_conv")(y)
            y = layers.BatchNormalization(name=f"stage{stage}_b_bn")(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                         name=f"stage{stage}_proj_conv")(shortcut)
                shortcut = layers.BatchNormalization(name=f"stage{stage}_proj_bn")(shortcut)
            x = layers.Add(name=f"stage{stage}_add")([shortcut, y])
            x = layers.ReLU(name=f"stage{stage}_relu")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        raise ValueError(f"Unknown architecture {name!r}; choose one of {ARCHITECTURES}.")
    outputs = layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def architecture_summary(model):
    """[(layer name, class name, weight shapes)] in layer order: equal summaries, equal nets.

    A trailing "_<n>" is dropped from names: Keras numbers auto-named layers
    (input_layer_1) by how many it has made in the process. Input layers go
    unnamed: Keras 3 and tf_keras name them differently.
    """
    return [["" if type(layer).__name__ == "InputLayer" else re.sub(r"_\d+$", "", layer.name),
             type(layer).__name__, [[int(d) for d in w.shape] for w in layer.weights]]
            for layer in model.layers]


def layer_weights(model):
    """{"layer/index": array} of every layer's weights, for an .npz."""
    return {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers
            for i, w in enumerate(layer.get_weights())}


def set_layer_weights(model, arrays):
    """Loads `layer_weights` output (by layer name) into a model of the same architecture."""
    for layer in model.layers:
        count = len(layer.get_weights())
        if count:
            layer.set_weights([arrays[f"{layer.name}/{i}"] for i in range(count)])


def compile_cosine(keras, model, learning_rate, steps, metrics=("accuracy",)):
    """Adam with cosine decay over `steps`, sparse categorical cross-entropy."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(int(steps), 1))
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=list(metrics))


def epoch_orders(num_examples, epochs, seed):
    """One permutation of the training set per epoch, fixed by `seed`; both tools use these."""
    rng = np.random.default_rng([seed, 7])
    return np.stack([rng.permutation(num_examples) for _ in range(epochs)]) if epochs else \
        np.zeros((0, num_examples), np.int64)


def fit_in_order(model, x, y, orders, batch_size):
    """Trains one epoch per row of `orders`, visiting examples in exactly that order."""
    for order in orders:
        model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)


def atomic_write(path, content):
    """Writes bytes or text to `path` through a temporary file, so no reader sees half a file."""
    path = pathlib.Path(path)
    data = content.encode() if isinstance(content, str) else content
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def package_versions(packages):
    """{package: installed version or "not installed"}, without importing the packages."""
    from importlib import metadata

    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def steps_per_epoch(num_examples, batch_size):
    """Batches in one epoch (the last one may be short)."""
    return -(-int(num_examples) // int(batch_size))


def interleaved_times(steps, warmup, rounds):
    """Wall time of each call of each step function, with the calls interleaved.

    `steps` maps a label to a no-argument function (one training step). After
    `warmup` untimed calls of each, every round calls each function once, in an
    order rotated from round to round, so that load from other processes falls
    on all of them alike. Returns {label: [seconds per call]}.
    """
    labels = list(steps)
    for label in labels:
        for _ in range(warmup):
            steps[label]()
    times = {label: [] for label in labels}
    for round_index in range(rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            steps[label]()
            times[label].append(time.perf_counter() - start)
    return times


def ratio_stats(numerator, denominator):
    """Median of per-round ratios and its interquartile range, for interleaved timings.

    Each round's two steps ran next to each other, so their ratio cancels slow
    drifts in machine load; the median drops the rounds hit by a burst.
    """
    ratios = np.asarray(numerator) / np.asarray(denominator)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def train_step_fn(model, x, y):
    """A no-argument function running one training step of a compiled model on (x, y)."""
    def step():
        model.train_on_batch(x, y)
    return step
