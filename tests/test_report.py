import csv
import math
import os

import keras
import numpy as np
import pytest

import tfqat
from tfqat.calibration.calibrators import calibrate
from tfqat.diagnostics.report import CSV_COLUMNS, compare_tflite, layer_report
from tfqat.diagnostics.evaluation import compare_to_model, run_tflite
from tfqat.nn.quantizers import bypass_quantizers
from tiny_models import mixed_model, random_images, randomize_batchnorm

EXPECTED_REFERENCES = {
    "image_fq": "float:image",
    "conv1_fq": "float:relu1",  # conv1 -> bn1 -> relu1 is one fused layer
    "dw_fq": "float:relu6_dw",
    "relu_add_fq": "float:relu_add",
    "conv2_fq": "float:conv2",  # Conv2D(activation="relu")
    "gap_fq": "float:gap",
    "fc_fq": "float:relu_fc",
    "logits_fq": "bypassed",  # the float model has no pre-softmax tensor
}


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    model = randomize_batchnorm(mixed_model())
    qat = tfqat.quantize_model(model)
    calibrate(qat, random_images(64, seed=1), method="minmax")
    return model, qat


def sqnr_db(reference, quantized):
    reference = np.asarray(reference, np.float64)
    noise = np.sum((reference - np.asarray(quantized, np.float64)) ** 2)
    return 10 * np.log10(np.sum(reference ** 2) / noise)


def test_one_row_per_tracked_quantizer_with_its_float_tensor(models):
    model, qat = models
    report = layer_report(model, qat, random_images(64, seed=1), batch_size=16)
    assert {row.name: row.reference for row in report.rows} == EXPECTED_REFERENCES
    for row in report.rows:
        # Ranges are the float min/max of this very data; upstream quantization
        # moves only a few values past them.
        assert row.saturation < 0.01
        assert (row.range_min, row.range_max) == qat.get_layer(row.name).current_range()
        assert 10 < row.sqnr_db < 80 and 10 < row.local_sqnr_db < 80  # 8-bit, not exact


def test_sqnr_is_against_the_float_models_tensor(models):
    model, qat = models
    x = random_images(40, seed=2)
    report = layer_report(model, qat, x, batch_size=16)
    float_relu1 = keras.Model(model.input, model.get_layer("relu1").output)(x)
    qat_conv1 = keras.Model(qat.input, qat.get_layer("conv1_fq").output)(x)
    expected = sqnr_db(float_relu1, qat_conv1)
    assert report.row("conv1_fq").sqnr_db == pytest.approx(expected, rel=1e-4)
    float_fc = keras.Model(model.input, model.get_layer("relu_fc").output)(x)
    qat_fc = keras.Model(qat.input, qat.get_layer("fc_fq").output)(x)
    assert report.row("fc_fq").sqnr_db == pytest.approx(sqnr_db(float_fc, qat_fc), rel=1e-4)


def test_input_sqnr_is_the_8bit_quantization_noise(models):
    # Uniform data on [0, 1] and a step of 1/255: signal power 1/3, noise step^2 / 12,
    # so SQNR = 10 log10(4 * 255^2) = 54.2 dB.
    model, _ = models
    qat = tfqat.quantize_model(model)
    x = random_images(200, seed=3)
    calibrate(qat, x, method="minmax")
    assert qat.get_layer("image_fq").current_range() == pytest.approx((0.0, 1.0), abs=1e-3)
    row = layer_report(model, qat, x).row("image_fq")
    assert row.sqnr_db == row.local_sqnr_db == pytest.approx(10 * np.log10(4 * 255 ** 2), abs=0.3)


def test_saturation_is_the_share_outside_the_range(models):
    model, _ = models
    qat = tfqat.quantize_model(model)
    x = random_images(32, seed=4)
    calibrate(qat, x, method="minmax")
    full = layer_report(model, qat, x).row("conv1_fq")
    quantizer = qat.get_layer("conv1_fq")
    narrowed = 0.5 * quantizer.current_range()[1]
    quantizer.range_max.assign(narrowed)
    conv1_out = keras.Model(qat.input, quantizer.input)(x).numpy()  # upstream is unchanged
    row = layer_report(model, qat, x).row("conv1_fq")
    assert row.saturation == pytest.approx(np.mean(conv1_out > narrowed)) and row.saturation > 0.01
    assert row.local_sqnr_db < full.local_sqnr_db - 3


def test_without_float_model_every_reference_is_bypassed(models):
    model, qat = models
    x = random_images(24, seed=5)
    bypassed = layer_report(None, qat, x)
    with_float = layer_report(model, qat, x)
    assert {row.reference for row in bypassed.rows} == {"bypassed"}
    # At the input both references are the raw data.
    assert bypassed.row("image_fq").sqnr_db == pytest.approx(with_float.row("image_fq").sqnr_db)
    # Bypassed references keep fake-quantized weights, so they show less error downstream.
    assert bypassed.row("fc_fq").sqnr_db > with_float.row("fc_fq").sqnr_db
    # The one bypassed row of `with_float`: the QAT tensor with no activation quantized.
    logits_fq = qat.get_layer("logits_fq")
    with bypass_quantizers(qat):
        reference = keras.Model(qat.input, logits_fq.input)(x)
    quantized = keras.Model(qat.input, logits_fq.output)(x)
    expected = sqnr_db(reference, quantized)
    assert with_float.row("logits_fq").sqnr_db == pytest.approx(expected, rel=1e-4)
    assert bypassed.row("logits_fq").sqnr_db == pytest.approx(expected, rel=1e-4)


def test_report_text_and_csv(models, tmp_path):
    model, qat = models
    report = layer_report(model, qat, random_images(16, seed=6))
    text = str(report)
    assert all(name in text for name in EXPECTED_REFERENCES)
    assert "SQNR dB" in text and "saturated" in text and "lowest SQNR:" in text
    path = tmp_path / "layers.csv"
    report.to_csv(str(path))
    assert os.listdir(tmp_path) == ["layers.csv"]  # no temporary file left
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["name"] for r in rows] == [row.name for row in report.rows]
    for parsed, row in zip(rows, report.rows):
        assert float(parsed["sqnr_db"]) == row.sqnr_db
        assert int(parsed["num_values"]) == row.num_values
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.to_csv(str(tmp_path / "missing" / "layers.csv"))


def test_layer_report_errors_are_clear(models):
    model, qat = models
    with pytest.raises(ValueError, match=r"shape \(4, 10, 10, 1\).*takes \(batch, 12, 12, 1\)"):
        layer_report(model, qat, random_images(4, shape=(10, 10, 1)))
    with pytest.raises(ValueError, match="never saw data.*image_fq"):
        layer_report(model, tfqat.quantize_model(model), random_images(4))
    other = mixed_model(input_shape=(10, 10, 1))
    with pytest.raises(ValueError, match="takes inputs"):
        layer_report(other, qat, random_images(4))


# ---- compare_tflite -----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(models):
    _, qat = models
    return tfqat.export_tflite(qat)


def test_compare_tflite_histogram_agreement_and_worst(models, exported):
    _, qat = models
    x = random_images(48, seed=7)
    labels = np.arange(48) % 4
    diff = compare_tflite(qat, exported, x, labels, batch_size=16)
    summary = compare_to_model(qat, exported, x, labels)
    assert diff.agreement == summary.agreement
    assert diff.summary.tflite_accuracy == summary.tflite_accuracy
    assert sum(diff.lsb_histogram.values()) == x.shape[0] * 4  # every output value once
    assert max(diff.lsb_histogram) == round(summary.max_diff_lsb)
    assert diff.worst_diff_lsb[0] == pytest.approx(summary.max_diff_lsb)
    assert list(diff.worst_diff_lsb) == sorted(diff.worst_diff_lsb, reverse=True)
    assert len(diff.worst_indices) == 10
    text = str(diff)
    assert "top-1 agreement" in text and "LSB" in text and "accuracy" in text


def test_compare_tflite_runs_the_kernels_it_is_asked_for(models, exported):
    _, qat = models
    x = random_images(32, seed=9)
    on_xnnpack = compare_tflite(qat, exported, x, kernels="xnnpack")
    builtin = compare_tflite(qat, exported, x)
    assert on_xnnpack.kernels == "xnnpack" and builtin.kernels == "builtin"
    assert str(on_xnnpack).startswith("LiteRT kernels: xnnpack")
    # Each summary is that runtime's own outputs against the QAT model.
    xnnpack_out = run_tflite(exported, x, kernels="xnnpack")
    qat_out = qat.predict(x, verbose=0)
    expected = np.abs(xnnpack_out.dequantized - qat_out).max() / xnnpack_out.scale
    assert on_xnnpack.summary.max_diff_lsb == pytest.approx(expected)
    with pytest.raises(ValueError, match="kernels='gpu'"):
        compare_tflite(qat, exported, x, kernels="gpu")


def test_compare_tflite_finds_the_inputs_that_disagree(models, exported):
    model, _ = models
    x = random_images(48, seed=8)
    # A QAT model that no longer matches the .tflite: the same ranges, one logit shifted.
    qat = tfqat.quantize_model(model)
    calibrate(qat, random_images(64, seed=1), method="minmax")
    # Raise the runner-up logit by the median margin, so that about half the inputs flip.
    logits = keras.Model(qat.input, qat.get_layer("logits_fq").input)(x).numpy()
    top = np.bincount(logits.argmax(-1)).argmax()
    margins = logits[:, [top]] - logits
    margins[:, top] = np.inf
    runner_up = margins.mean(axis=0).argmin()
    bias = qat.get_layer("logits").bias
    shift = np.zeros(bias.shape, np.float32)
    shift[runner_up] = np.median(margins[:, runner_up])
    bias.assign(bias.numpy() + shift)
    diff = compare_tflite(qat, exported, x)
    lite = run_tflite(exported, x).dequantized.argmax(-1)
    expected = np.flatnonzero(lite != qat.predict(x, verbose=0).argmax(-1))
    assert len(expected) > 0
    np.testing.assert_array_equal(diff.disagreements, expected)
    first = diff.worst_indices[:min(len(expected), 10)]
    assert set(first) <= set(expected)  # disagreements are listed first
    assert sum(c for lsb, c in diff.lsb_histogram.items() if lsb >= 1) > 0


def test_compare_tflite_errors_are_clear(models, exported):
    _, qat = models
    with pytest.raises(ValueError, match=r"data has shape \(4, 10, 10, 1\).*\(batch, 12, 12, 1\)"):
        compare_tflite(qat, exported, random_images(4, shape=(10, 10, 1)))
    with pytest.raises(ValueError, match="3 labels for 4 inputs"):
        compare_tflite(qat, exported, random_images(4), labels=[0, 1, 2])
    with pytest.raises(TypeError, match="numpy array"):
        compare_tflite(qat, exported, [random_images(4)])


def test_sqnr_helpers_handle_exact_and_silent_tensors():
    from tfqat.diagnostics.report import _sqnr_db

    assert _sqnr_db(1.0, 0.0) == math.inf
    assert _sqnr_db(0.0, 1.0) == -math.inf
    assert _sqnr_db(100.0, 1.0) == pytest.approx(20.0)
