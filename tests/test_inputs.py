"""Input data conventions (model.fit's): arrays, lists, tuples, dicts, tf.data, (x, y) batches,
for one-input and multi-input models, through calibrate and layer_report."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.inputs import input_batches


def _two_input_model():
    a = keras.Input((6,), name="a")
    b = keras.Input((6,), name="b")
    x = keras.layers.Concatenate(name="cat")([keras.layers.Dense(4, name="da")(a),
                                             keras.layers.Dense(4, name="db")(b)])
    return keras.Model([a, b], keras.layers.Dense(2, name="out")(x))


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 6)).astype("float32"), rng.normal(size=(40, 6)).astype("float32")


@pytest.mark.parametrize("form", ["list", "tuple", "dict", "dataset", "batches_with_labels"])
def test_every_form_gives_the_same_batches(arrays, form):
    model = _two_input_model()
    xa, xb = arrays
    data = {
        "list": [xa, xb],
        "tuple": (xa, xb),
        "dict": {"b": xb, "a": xa},
        "dataset": tf.data.Dataset.from_tensor_slices((xa, xb)).batch(16),
        "batches_with_labels": [((xa[i:i + 16], xb[i:i + 16]), np.zeros(len(xa[i:i + 16])))
                                for i in range(0, 40, 16)],
    }[form]
    batches = list(input_batches(model, data, batch_size=16))
    assert [len(b[0]) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), xb)


def test_wrong_keys_and_lengths_name_the_inputs(arrays):
    model = _two_input_model()
    xa, xb = arrays
    with pytest.raises(ValueError, match=r"inputs \['a', 'b'\]"):
        list(input_batches(model, {"a": xa, "c": xb}))
    with pytest.raises(ValueError, match="different lengths"):
        list(input_batches(model, [xa, xb[:10]]))
    with pytest.raises(ValueError, match="2 inputs"):
        list(input_batches(model, xa))


@pytest.mark.parametrize("form", ["list", "dict"])
def test_calibrate_and_layer_report_take_multi_input_data(arrays, form):
    model = _two_input_model()
    xa, xb = arrays
    data = [xa, xb] if form == "list" else {"a": xa, "b": xb}
    qat = tfqat.quantize_model(model)
    ranges = tfqat.calibrate(qat, data, batch_size=16)
    assert {"a_fq", "b_fq", "cat_fq"} <= set(ranges)
    lo, hi = ranges["a_fq"]
    assert lo == pytest.approx(min(xa.min(), 0.0)) and hi == pytest.approx(max(xa.max(), 0.0))
    report = tfqat.layer_report(model, qat, data)
    assert report.row("a_fq").reference == "float:a"
    assert report.row("cat_fq").sqnr_db > 20


def _two_in_two_out():
    a = keras.Input((6,), name="a")
    b = keras.Input((5,), name="b")
    x = keras.layers.Concatenate(name="cat")([keras.layers.Dense(4, name="da")(a),
                                             keras.layers.Dense(4, name="db")(b)])
    first = keras.layers.Dense(3, name="first")(x)
    second = keras.layers.Dense(2, name="second")(x)
    return keras.Model([a, b], [second, first])  # the converter writes 'first' first


def test_runner_fidelity_and_compare_take_several_inputs_and_outputs():
    rng = np.random.default_rng(0)
    xa = rng.normal(size=(32, 6)).astype("float32")
    xb = rng.normal(size=(32, 5)).astype("float32")
    qat = tfqat.quantize_model(_two_in_two_out())
    tfqat.calibrate(qat, {"a": xa, "b": xb})
    flatbuffer = tfqat.export_tflite(qat)
    from tfqat.diagnostics.evaluation import run_tflite

    outputs = run_tflite(flatbuffer, {"b": xb, "a": xa})
    assert [o.dequantized.shape for o in outputs] == [(32, 2), (32, 3)]  # Keras order
    keras_out = qat.predict([xa, xb], verbose=0)
    for lite, expected in zip(outputs, keras_out):
        assert np.abs(lite.dequantized - expected).max() <= 2.0 * lite.scale + 1e-6
    fidelity = tfqat.op_fidelity(qat, flatbuffer, [xa[:8], xb[:8]])
    assert not fidelity.unmatched and fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)
    assert {"cat_fq", "first_fq", "second_fq"} <= {d.quantizer for d in fidelity.diffs}
    diff = tfqat.compare_tflite(qat, flatbuffer, (xa, xb), labels=[np.zeros(32), np.zeros(32)])
    assert len(diff.summary) == 2 and diff.summary[0].num_examples == 32
    assert "output 1:" in str(diff)


def test_a_list_of_inputs_follows_the_keras_order_not_the_files():
    # The .tflite's signature sorts inputs by name ("alpha" before "zeta"); export_tflite
    # records Keras's order, so a list means what it means to model.predict.
    zeta, alpha = keras.Input((4,), name="zeta"), keras.Input((6,), name="alpha")
    merged = keras.layers.Concatenate()([keras.layers.Dense(3)(zeta), keras.layers.Dense(3)(alpha)])
    model = keras.Model([zeta, alpha], keras.layers.Dense(2)(merged))
    rng = np.random.default_rng(1)
    xz, xa = rng.random((16, 4), np.float32), rng.random((16, 6), np.float32)
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, [xz, xa])
    flatbuffer = tfqat.export_tflite(qat)
    from tfqat.diagnostics.evaluation import run_tflite
    from tfqat.export.reader import read_tflite

    assert read_tflite(flatbuffer).input_names == ["zeta", "alpha"]
    by_list = run_tflite(flatbuffer, [xz, xa])
    np.testing.assert_array_equal(by_list.raw, run_tflite(flatbuffer, {"alpha": xa, "zeta": xz}).raw)
    expected = qat.predict([xz, xa], verbose=0)
    assert np.abs(by_list.dequantized - expected).max() <= 1.0 * by_list.scale + 1e-6
