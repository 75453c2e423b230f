"""run_tflite / compare_to_model on a tiny QAT model, with the real converter and LiteRT."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.diagnostics import evaluation
from tfqat.export.reader import load_interpreter

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def exported():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=4))
    qat.compile("adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 64)
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)  # initializes the activation ranges
    return model, qat, tfqat.export_tflite(qat), x, y


def manual_run(flatbuffer, x):
    """One example at a time through a fixed-shape interpreter."""
    interpreter = load_interpreter(flatbuffer)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    rows = []
    for example in x:
        q = np.clip(np.round(example / in_scale) + in_zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows), out["quantization"]


def test_run_tflite_matches_a_manual_loop(exported):
    _, _, flatbuffer, x, _ = exported
    result = evaluation.run_tflite(flatbuffer, x, batch_size=16)
    raw, (scale, zero_point) = manual_run(flatbuffer, x)
    assert result.raw.dtype == np.int8 and result.raw.shape == (64, NUM_CLASSES)
    np.testing.assert_array_equal(result.raw, raw)
    assert (result.scale, result.zero_point) == (pytest.approx(scale), zero_point)
    np.testing.assert_allclose(result.dequantized, (raw.astype(np.float32) - zero_point) * scale)


def test_softmax_output_uses_the_fixed_int8_range(exported):
    result = evaluation.run_tflite(exported[2], exported[3])
    assert (result.scale, result.zero_point) == (1 / 256, -128)
    assert np.all(result.dequantized >= 0) and np.all(result.dequantized < 1)


def test_run_tflite_batch_size_does_not_change_outputs(exported, tmp_path):
    _, _, flatbuffer, x, _ = exported
    path = tmp_path / "model.tflite"
    path.write_bytes(flatbuffer)
    whole = evaluation.run_tflite(flatbuffer, x, batch_size=64).raw
    np.testing.assert_array_equal(evaluation.run_tflite(path, x, batch_size=7).raw, whole)
    np.testing.assert_array_equal(evaluation.run_tflite(str(path), x[:1], batch_size=1).raw,
                                  whole[:1])


def test_run_tflite_on_a_float_model(exported):
    model, _, _, x, _ = exported
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    result = evaluation.run_tflite(flatbuffer, x, batch_size=10)
    assert result.raw.dtype == np.float32 and (result.scale, result.zero_point) == (1.0, 0)
    np.testing.assert_allclose(result.dequantized, model.predict(x, verbose=0), atol=1e-5)


def test_run_tflite_rejects_bad_inputs(exported):
    flatbuffer, x = exported[2], exported[3]
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        evaluation.run_tflite(flatbuffer, x[:, :4])
    with pytest.raises(ValueError, match="N >= 1"):
        evaluation.run_tflite(flatbuffer, x[:0])
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.run_tflite(flatbuffer, x, batch_size=0)


def test_compare_to_model_against_manual_figures(exported):
    _, qat, flatbuffer, x, y = exported
    result = evaluation.compare_to_model(qat, flatbuffer, x, y, batch_size=16)
    raw, (scale, zero_point) = manual_run(flatbuffer, x)
    lite = (raw.astype(np.float64) - zero_point) * scale
    keras_out = qat.predict(x, verbose=0)
    diff_lsb = np.abs(lite - keras_out) / scale
    assert result.num_examples == 64
    assert 0.0 <= result.agreement <= 1.0
    assert result.agreement == pytest.approx(np.mean(lite.argmax(-1) == keras_out.argmax(-1)))
    assert result.max_diff_lsb == pytest.approx(diff_lsb.max(), abs=1e-4)
    assert result.mean_diff_lsb == pytest.approx(diff_lsb.mean(), abs=1e-4)
    assert result.tflite_accuracy == pytest.approx(np.mean(lite.argmax(-1) == y))
    assert result.model_accuracy == pytest.approx(np.mean(keras_out.argmax(-1) == y))
    # The QAT output is fake-quantized onto the same int8 grid, so differences are whole LSBs.
    np.testing.assert_allclose(diff_lsb, np.round(diff_lsb), atol=1e-3)
    assert result.max_diff_lsb <= 2


def test_compare_to_model_measures_a_model_that_differs(exported):
    # The float model is not on the int8 grid: its differences are fractions of an LSB and more.
    model, _, flatbuffer, x, _ = exported
    result = evaluation.compare_to_model(model, flatbuffer, x)
    lite = evaluation.run_tflite(flatbuffer, x)
    diff_lsb = np.abs(lite.dequantized - model.predict(x, verbose=0)) / (1 / 256)
    assert result.max_diff_lsb == pytest.approx(diff_lsb.max(), rel=1e-4)
    assert result.mean_diff_lsb == pytest.approx(diff_lsb.mean(), rel=1e-4)
    assert result.mean_diff_lsb > 0.05
    assert result.tflite_accuracy is None and result.model_accuracy is None


def test_compare_to_model_rejects_a_different_output_shape(exported):
    _, qat, flatbuffer, x, _ = exported
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(NUM_CLASSES + 1)])
    with pytest.raises(ValueError, match="output shape"):
        evaluation.compare_to_model(other, flatbuffer, x)
