"""reestimate_batchnorm: exact moments from data on float and QAT models, and accuracy back."""

import keras
import numpy as np
import pytest

import tfqat
from tfqat.calibration.batchnorm import reestimate_batchnorm, unsettled_weight

EPS = 1e-3


def two_bn_mlp(momentum=0.99):
    inp = keras.Input((6,))
    x = keras.layers.Dense(5, name="fc1")(inp)
    x = keras.layers.BatchNormalization(momentum=momentum, epsilon=EPS, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.5)(x)  # must not enter the statistics
    x = keras.layers.Dense(4, use_bias=False, name="fc2")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, epsilon=EPS, name="bn2")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))


def numpy_moments(model, x, batch_size):
    """Count-weighted averages of the batch moments of bn1's and bn2's inputs, computed by hand."""
    w1, b1 = model.get_layer("fc1").get_weights()
    g1, be1 = model.get_layer("bn1").get_weights()[:2]
    (w2,) = model.get_layer("fc2").get_weights()
    per_batch = {"bn1": [], "bn2": []}
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].astype(np.float64)
        y1 = xb @ w1 + b1
        m1, v1 = y1.mean(0), y1.var(0)
        h = np.maximum(g1 * (y1 - m1) / np.sqrt(v1 + EPS) + be1, 0.0)  # training-mode bn1
        y2 = h @ w2
        per_batch["bn1"].append((len(xb), m1, v1))
        per_batch["bn2"].append((len(xb), y2.mean(0), y2.var(0)))
    out = {}
    for name, rows in per_batch.items():
        n = np.array([r[0] for r in rows], np.float64)[:, None]
        out[name] = ((n * np.stack([r[1] for r in rows])).sum(0) / n.sum(),
                     (n * np.stack([r[2] for r in rows])).sum(0) / n.sum())
    return out


def randomize_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype("float32")
                               for w in layer.get_weights()])


def test_float_model_gets_the_exact_average_of_batch_moments(rng):
    model = two_bn_mlp()
    randomize_bn(model, rng)
    x = rng.normal(2.0, 3.0, (70, 6)).astype("float32")  # batches of 32, 32 and 6
    trainable_before = [w.numpy().copy() for w in model.trainable_weights]
    stats = reestimate_batchnorm(model, x, batch_size=32)
    expected = numpy_moments(model, x, 32)
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), expected[name][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), expected[name][1], rtol=1e-4)
        np.testing.assert_array_equal(stats[name][0], layer.moving_mean.numpy())
    for before, after in zip(trainable_before, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    # steps limits the batches: only the first batch of 32.
    reestimate_batchnorm(model, x, steps=1, batch_size=32)
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(),
                               numpy_moments(model, x[:32], 32)["bn1"][0], rtol=1e-4, atol=1e-5)


def test_qat_model_folded_bn_gets_the_conv_output_moments(rng):
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(momentum=0.999, epsilon=EPS, name="bn")(x)
    x = keras.layers.ReLU()(x)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    model.get_layer("conv").bias.assign(rng.normal(size=3).astype("float32"))
    # A long quant_delay passes activations through in training, so numpy sees the same input.
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(quant_delay=10**6))
    folded = [layer for layer in qat.layers
              if isinstance(layer, tfqat.FusedQuantLayer) and layer.batchnorm is not None]
    assert len(folded) == 1
    layer = folded[0]
    data = rng.normal(size=(40, 6, 6, 2)).astype("float32")
    ranges_before = [v.numpy().copy() for v in qat.non_trainable_variables
                     if "moving" not in v.path]
    reestimate_batchnorm(qat, data, batch_size=16)
    kernel = model.get_layer("conv").kernel.numpy().astype(np.float64)
    bias = model.get_layer("conv").bias.numpy()
    means, variances, counts = [], [], []
    for start in range(0, 40, 16):
        xb = data[start:start + 16].astype(np.float64)
        patches = np.stack([xb[:, i:i + 3, j:j + 3, :] for i in range(4) for j in range(4)], 1)
        y = np.einsum("npijc,ijco->npo", patches, kernel) + bias
        means.append(y.mean((0, 1)))
        variances.append(y.var((0, 1)))
        counts.append(y.shape[0] * y.shape[1])
    counts = np.array(counts, np.float64)[:, None]
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               (counts * means).sum(0) / counts.sum(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               (counts * variances).sum(0) / counts.sum(), rtol=1e-4)
    ranges_after = [v.numpy() for v in qat.non_trainable_variables if "moving" not in v.path]
    for before, after in zip(ranges_before, ranges_after):  # ranges and step counters restored
        np.testing.assert_array_equal(before, after)


def test_frozen_qat_model_and_bn_free_model_are_refused(rng):
    inp = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 3)(inp)
    x = keras.layers.BatchNormalization(name="the_bn")(x)
    model = keras.Model(inp, keras.layers.Flatten()(x))
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=0))
    name = [layer.name for layer in qat.layers if isinstance(layer, tfqat.FusedQuantLayer)][0]
    qat.compile("sgd", "mse")
    qat.fit(rng.normal(size=(4, 4, 4, 1)), np.zeros((4, 8)), verbose=0)
    with pytest.raises(ValueError, match=f"{name}.*before the freeze"):
        reestimate_batchnorm(qat, np.zeros((4, 4, 4, 1), "float32"))
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no trainable BatchNormalization"):
        reestimate_batchnorm(plain, np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="steps=0"):
        reestimate_batchnorm(model, np.zeros((4, 4, 4, 1), "float32"), steps=0)


def test_unsettled_weight():
    assert unsettled_weight(0.999, 360) == pytest.approx(0.6975, abs=1e-3)
    assert unsettled_weight(0.99, 1000) < 1e-4


def test_accuracy_lost_to_unsettled_moving_stats_comes_back():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    inp = keras.Input((8, 8, 1))
    h = inp
    for filters in (16, 32):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization(momentum=0.999)(h)  # keras.applications' momentum
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=4, verbose=0)  # 176 steps
    before = model.evaluate(x_test, y_test, verbose=0)[1]
    reestimate_batchnorm(model, x_train, batch_size=32)
    after = model.evaluate(x_test, y_test, verbose=0)[1]
    # What training mode (batch statistics) scores on the test set: the accuracy to recover.
    batch_mode = np.mean(np.argmax(model(x_test, training=True), -1) == y_test)
    assert after > before + 0.2, (before, after)
    assert after >= batch_mode - 0.03, (after, batch_mode)
