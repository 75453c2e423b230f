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
