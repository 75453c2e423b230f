import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.calibration.calibrators import (EntropyCalibrator, PercentileCalibrator, StreamingHistogram,
                               calibrate, entropy_threshold, tracked_quantizers)
from tfqat.diagnostics.evaluation import run_tflite
from tfqat.nn.quantizers import ActivationQuantizer, bypass_quantizers
from tiny_models import mixed_model, random_images, randomize_batchnorm


# ---- brute-force KL reference --------------------------------------------------

def smooth_reference(values, eps=1e-4):
    values = [float(v) for v in values]
    zeros = sum(1 for v in values if v == 0)
    nonzeros = len(values) - zeros
    if nonzeros == 0:
        return None
    out = [eps if v == 0 else v - eps * zeros / nonzeros for v in values]
    return None if min(out) <= 0 else np.array(out)


def kl_reference(x, threshold, num_bins, signed, num_quantized_bins=255):
    """KL(P||Q) for clipping at `threshold`, built from the raw data with loops."""
    lo = -threshold if signed else 0.0
    # P: every value clipped into [lo, threshold]; sliced: only the values inside.
    p = np.histogram(np.clip(x, lo, threshold), bins=num_bins, range=(lo, threshold))[0]
    sliced = np.histogram(x, bins=num_bins, range=(lo, threshold))[0]
    per_level = num_bins // num_quantized_bins
    q = np.zeros(num_bins)
    for level in range(num_quantized_bins):
        start = level * per_level
        stop = num_bins if level == num_quantized_bins - 1 else start + per_level
        members = [k for k in range(start, stop) if p[k] != 0]
        for k in members:
            q[k] = sliced[start:stop].sum() / len(members)
    p, q = smooth_reference(p), smooth_reference(q)
    if p is None or q is None:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    return float(sum(pk * np.log(pk / qk) for pk, qk in zip(p, q)))


def reference_threshold(x, num_bins):
    """Tries every candidate threshold of an `num_bins` histogram of x; returns the best."""
    signed = x.min() < 0
    top = np.abs(x).max() if signed else x.max()
    width = (2 * top if signed else top) / num_bins
    if signed:
        candidates = [((i + 0.5) * width, 2 * i + 1) for i in range(127, num_bins // 2 + 1)]
    else:
        candidates = [(i * width, i) for i in range(255, num_bins + 1)]
    kl = [kl_reference(x, t, n, signed) for t, n in candidates]
    return candidates[int(np.argmin(kl))][0]


def gaussian_with_outliers(n=30_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    rare = rng.choice(n, n // 2000, replace=False)  # 0.05 % outliers at 12..20 sigma
    x[rare] = rng.choice([-1, 1], rare.size) * rng.uniform(12, 20, rare.size)
    return x


def feed(calibrator, x, num_batches):
    for batch in np.array_split(x, num_batches):
        calibrator.update(batch)
    return calibrator


@pytest.mark.parametrize("name", ["gaussian_outliers", "uniform"])
def test_entropy_threshold_matches_brute_force_reference(name):
    x = gaussian_with_outliers() if name == "gaussian_outliers" else \
        np.random.default_rng(1).uniform(-1, 1, 30_000)
    expected = reference_threshold(x, num_bins=1001)
    one_batch = EntropyCalibrator(num_bins=1001)
    one_batch.update(x)
    assert entropy_threshold(one_batch.histogram) == pytest.approx(expected, rel=1e-9)
    # Streamed: the max grows across batches and the histogram is re-binned.
    streamed = entropy_threshold(feed(EntropyCalibrator(num_bins=1001), x, 10).histogram)
    top = np.abs(x).max()
    assert streamed == pytest.approx(expected, abs=3 * 2 * top / 1001)
    if name == "gaussian_outliers":
        assert expected < 12 < top  # every outlier (12..20 sigma) is clipped
        assert expected > 3  # ... but not the Gaussian body
    else:
        assert expected > 0.95 * top  # nothing worth clipping


def test_entropy_with_8001_bins_clips_outliers_and_keeps_uniform():
    x = gaussian_with_outliers(100_000)
    lo, hi = feed(EntropyCalibrator(), x, 20).compute_range()
    assert lo == -hi and 3 < hi < 12 < np.abs(x).max()  # clips every outlier
    u = np.random.default_rng(2).uniform(-3, 1, 100_000)
    lo, hi = feed(EntropyCalibrator(), u, 20).compute_range()
    # Symmetric threshold near max|x|, narrowed to the side the data occupies.
    assert lo == pytest.approx(u.min(), rel=0.03) and hi == pytest.approx(u.max())


def test_entropy_on_relu_outputs_is_one_sided_and_ignores_exact_zeros():
    rng = np.random.default_rng(3)
    positive = np.abs(rng.normal(0, 1, 20_000))
    relu = np.concatenate([positive, np.zeros(20_000)])
    rng.shuffle(relu)
    calibrator = feed(EntropyCalibrator(num_bins=1001), relu, 5)
    lo, hi = calibrator.compute_range()
    assert lo == 0.0 and not calibrator.histogram.signed
    # Exact zeros cost nothing (zero is exactly representable), so the threshold
    # is the one for the positive values alone...
    assert hi == pytest.approx(reference_threshold(positive, 1001), abs=3 * positive.max() / 1001)
    # ...which the zero spike in bin 0 would otherwise drag down.
    with_zeros = entropy_threshold(calibrator.histogram, exclude_zeros=False)
    assert with_zeros < 0.8 * hi and hi > 3.0


@pytest.mark.parametrize("percentile", [99.0, 99.99])
def test_percentile_matches_numpy_on_each_tail(percentile):
    rng = np.random.default_rng(4)
    # The spread grows from batch to batch, so the histogram is re-binned many times.
    batches = [rng.normal(0.5, 1 + k / 10, 4000) for k in range(30)]
    x = np.concatenate(batches)
    calibrator = PercentileCalibrator(percentile)
    for batch in batches:
        calibrator.update(batch)
    lo, hi = calibrator.compute_range()
    bin_width = 2 * np.abs(x).max() / 8001
    assert_between_order_statistics(hi, x, percentile, bin_width)
    assert_between_order_statistics(lo, x, 100 - percentile, bin_width)


def assert_between_order_statistics(value, x, percentile, bin_width):
    # Within a bin of the samples on either side of the quantile's rank (in the
    # sparse tails those may be far apart, and any value between them is right).
    below = np.percentile(x, percentile, method="lower")
    above = np.percentile(x, percentile, method="higher")
    assert below - bin_width <= value <= above + bin_width, (below, value, above)


def test_percentile_of_non_negative_data_starts_at_zero():
    x = np.random.default_rng(5).exponential(1.0, 50_000)
    lo, hi = feed(PercentileCalibrator(99.9), x, 7).compute_range()
    assert lo == 0.0
    assert_between_order_statistics(hi, x, 99.9, x.max() / 8001)


@pytest.mark.parametrize("make", [lambda: PercentileCalibrator(99.9), EntropyCalibrator])
def test_calibrator_state_does_not_grow_with_batches(make):
    rng = np.random.default_rng(6)
    calibrator = make()
    calibrator.update(rng.normal(0, 1, 1000))
    size_after_one = calibrator.nbytes
    for k in range(49):
        calibrator.update(rng.normal(0, 1 + k, 1000))  # the range keeps growing
    assert calibrator.nbytes == size_after_one
    assert calibrator.histogram.counts.size == 8001
    assert calibrator.histogram.total == pytest.approx(50 * 1000)  # re-binning keeps every count


def test_histogram_switches_to_signed_and_keeps_counts():
    h = StreamingHistogram(num_bins=11)
    h.add(np.zeros(5))
    h.add(np.array([1.0, 2.0]))
    assert not h.signed and (h.lo, h.hi) == (0.0, 2.0) and h.counts[0] == 5
    h.add(np.array([-4.0]))
    assert h.signed and (h.lo, h.hi) == (-4.0, 4.0) and h.total == 8
    assert h.counts[h.bin_of_zero()] >= 5 and h.exact_zeros == 5


def test_histogram_needs_odd_bins():
    with pytest.raises(ValueError, match="odd"):
        StreamingHistogram(num_bins=8000)


# ---- bypass ----------------------------------------------------------------------

def test_bypass_passes_values_through_and_restores():
    inp = keras.Input((4,))
    quantizer = ActivationQuantizer(name="q")
    model = keras.Model(inp, quantizer(inp))
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4) * np.float32(0.3333)
    model(x, training=True)  # range and step from this batch
    before = (quantizer.current_range(), int(quantizer.step.numpy()))
    with bypass_quantizers(model) as bypassed:
        assert bypassed == [quantizer]
        np.testing.assert_array_equal(model(x, training=True).numpy(), x)
        np.testing.assert_array_equal(model(2 * x, training=False).numpy(), 2 * x)
    assert (quantizer.current_range(), int(quantizer.step.numpy())) == before
    assert not np.array_equal(model(x, training=False).numpy(), x)  # quantizes again


# ---- calibrate on models -----------------------------------------------------------

@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(0)
    return randomize_batchnorm(mixed_model())


@pytest.mark.parametrize("method", ["minmax", "percentile"])  # entropy: the export test
def test_calibrate_sets_every_tracked_range(float_model, method):
    qat = tfqat.quantize_model(float_model)
    moving_mean = qat.get_layer("conv1").moving_mean.numpy().copy()
    kernel = qat.get_layer("conv1").kernel.numpy().copy()
    x = random_images(48)
    ranges = calibrate(qat, x, method=method, batch_size=16)
    tracked = tracked_quantizers(qat)
    assert sorted(ranges) == sorted(q.name for q in tracked)
    for q in tracked:
        lo, hi = q.current_range()
        assert q.is_calibrated and int(q.step.numpy()) == 0  # calibrating is not a training step
        assert lo <= 0.0 <= hi and hi - lo > 0 and ranges[q.name] == (lo, hi)
    softmax = qat.get_layer("logits_activation_fq")
    assert softmax.current_range() == (0.0, 255.0 / 256.0)
    # Nothing but the ranges changed.
    np.testing.assert_array_equal(qat.get_layer("conv1").moving_mean.numpy(), moving_mean)
    np.testing.assert_array_equal(qat.get_layer("conv1").kernel.numpy(), kernel)
    if method == "minmax":
        assert ranges["image_fq"] == pytest.approx((0.0, float(x.max())))


def test_minmax_statistics_are_float_activations(float_model):
    qat = tfqat.quantize_model(float_model)
    x = random_images(32, seed=3)
    ranges = calibrate(qat, x, method="minmax")
    float_relu1 = keras.Model(float_model.input, float_model.get_layer("relu1").output)(x)
    float_fc = keras.Model(float_model.input, float_model.get_layer("relu_fc").output)(x)
    # Only weight quantization separates these from the float model's tensors.
    assert ranges["conv1_fq"][1] == pytest.approx(float(np.max(float_relu1)), rel=0.02)
    assert ranges["fc_fq"][1] == pytest.approx(float(np.max(float_fc)), rel=0.05)


def test_data_formats_give_the_same_ranges(float_model):
    x = random_images(40, seed=4)
    y = np.arange(40) % 4
    results = []
    for data in (x,
                 tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                 [x[:10], x[10:]],
                 (batch for batch in np.array_split(x, 3))):
        qat = tfqat.quantize_model(float_model)
        results.append(calibrate(qat, data, method="minmax"))
    for result in results[1:]:
        assert sorted(result) == sorted(results[0])
        for name, value in result.items():
            np.testing.assert_allclose(value, results[0][name], rtol=1e-6, err_msg=name)


def test_model_with_a_single_quantizer():
    inp = keras.Input((3, 2), name="image")
    qat = tfqat.quantize_model(keras.Model(inp, keras.layers.Flatten()(inp)))
    assert [q.name for q in tracked_quantizers(qat)] == ["image_fq"]
    x = np.random.default_rng(0).normal(size=(10, 3, 2)).astype(np.float32)
    assert calibrate(qat, x, method="minmax") == {
        "image_fq": pytest.approx((float(x.min()), float(x.max())))}


def test_num_batches_limits_the_data(float_model):
    x = random_images(64, seed=6)
    x[32:] *= 3.0
    qat = tfqat.quantize_model(float_model)
    ranges = calibrate(qat, x, method="minmax", batch_size=32, num_batches=1)
    assert ranges["image_fq"][1] == pytest.approx(float(x[:32].max()))


def test_training_continues_from_calibrated_ranges(float_model):
    qat = tfqat.quantize_model(float_model, tfqat.QuantConfig(ema_decay=0.9))
    x = random_images(32, seed=7)
    calibrated = calibrate(qat, x, method="minmax")["image_fq"][1]
    qat(x * 5.0, training=True)  # one training step on much wider data
    expected = 0.9 * calibrated + 0.1 * float((x * 5.0).max())  # EMA, not a re-initialization
    assert qat.get_layer("image_fq").current_range()[1] == pytest.approx(expected, rel=1e-5)


def test_calibrated_model_exports_integer_only(float_model, tmp_path):
    qat = tfqat.quantize_model(float_model)
    with pytest.raises(tfqat.ExportError, match="never observed"):
        tfqat.export_tflite(qat)
    with pytest.warns(UserWarning, match="fewer than 8001 values reached.*gap_fq"):
        ranges = calibrate(qat, random_images(32), method="entropy")  # gap_fq: 32 x 8 values
    assert all(q.is_calibrated for q in tracked_quantizers(qat))
    assert all(lo <= 0.0 <= hi and hi > lo for lo, hi in ranges.values())
    flatbuffer = tfqat.export_tflite(qat, str(tmp_path / "ptq.tflite"))
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="kl"), "Unknown calibration method 'kl'"),
    (dict(method="percentile", percentile=0), "percentile=0 must be"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(num_batches=0), "num_batches=0"),
])
def test_bad_arguments_are_named(float_model, kwargs, match):
    qat = tfqat.quantize_model(float_model)
    with pytest.raises(ValueError, match=match):
        calibrate(qat, random_images(4), **kwargs)


def test_bad_data_gets_a_clear_error(float_model):
    qat = tfqat.quantize_model(float_model)
    with pytest.raises(ValueError, match=r"shape \(4, 10, 10, 1\).*takes \(batch, 12, 12, 1\)"):
        calibrate(qat, random_images(4, shape=(10, 10, 1)))
    with pytest.raises(ValueError, match="no batches"):
        calibrate(qat, [])
    bad = random_images(4)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibrate(qat, bad)
    with pytest.raises(TypeError, match="numpy array"):
        calibrate(qat, "images.npy")
    with pytest.raises(ValueError, match="quantize_model"):
        calibrate(float_model, random_images(4))
    assert not qat.get_layer("image_fq").is_calibrated  # failed calls changed nothing


# ---- post-training quantization on real data ---------------------------------------

@pytest.fixture(scope="module")
def trained_digits_cnn():
    from tfqat.training.data import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits(seed=0)
    layers = keras.layers
    inp = keras.Input(data.input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)  # settles within 3 epochs
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(data.num_classes, activation="softmax", name="logits")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=3, batch_size=32, verbose=0)
    accuracy = float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test))
    return model, data, accuracy


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_post_training_quantization_keeps_float_accuracy(trained_digits_cnn, method):
    model, data, float_accuracy = trained_digits_cnn
    assert float_accuracy > 0.85
    qat = tfqat.quantize_model(model)
    calibrate(qat, data.x_train[:1024], method=method, batch_size=128)
    flatbuffer = tfqat.export_tflite(qat)
    assert tfqat.inspect_tflite(flatbuffer).integer_only
    int8_accuracy = float(np.mean(
        run_tflite(flatbuffer, data.x_test).dequantized.argmax(-1) == data.y_test))
    print(f"digits PTQ ({method}): float {float_accuracy:.4f}, int8 {int8_accuracy:.4f}")
    assert int8_accuracy >= float_accuracy - 0.03
