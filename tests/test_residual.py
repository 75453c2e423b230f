"""Inception-ResNet's scaled residual sum (keras.applications' CustomScaleLayer) through
quantize_model -> fit -> save/load -> export_tflite, as tests/test_layer_set.py checks a layer:
integer-only with int8 I/O, MUL and ADD in the .tflite, op by op within 1 LSB (the inner
product tensor included)."""

import keras
import numpy as np

import tfqat
from tfqat.diagnostics.fidelity import op_fidelity
from tfqat.nn.residual import QuantScaledAdd

L = keras.layers


def inception_resnet_block_model():
    # Two blocks as keras.applications.InceptionResNetV2 ends its stages: x + 0.17 * r then
    # ReLU, and (the last block) x + 1.0 * r with no activation.
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="x")
    x = L.Conv2D(4, 1, activation="relu", name="stem")(inp)
    branch = L.Conv2D(4, 3, padding="same", activation="relu", name="branch")(x)
    up = L.Conv2D(4, 1, name="up")(branch)
    x = CustomScaleLayer(0.17, name="block_1")([x, up])
    x = L.Activation("relu", name="block_1_ac")(x)
    up = L.Conv2D(4, 1, name="up_2")(x)
    x = CustomScaleLayer(1.0, name="block_2")([x, up])
    return keras.Model(inp, L.Dense(5, name="head")(L.Flatten()(x)))


def test_scaled_add_computes_the_float_sum_and_rounds_the_product():
    layer = QuantScaledAdd(0.25, name="s")
    shortcut = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    residual = np.linspace(-4, 4, 8, dtype="float32").reshape(2, 4)
    layer([shortcut, residual], training=True)  # tracks the product's range [-1, 1]
    out = np.asarray(layer([shortcut, residual], training=False))
    product_step = 2.0 / 255
    np.testing.assert_allclose(out, shortcut + residual * 0.25, atol=product_step / 2 + 1e-6)
    assert [q.name for q in layer.inner_quantizers] == ["s_scaled_residual_fq"]
    assert QuantScaledAdd(1.0).inner_quantizers == []
    assert QuantScaledAdd.from_config(layer.get_config()).scale == 0.25


def test_inception_resnet_blocks_export_integer_only_and_match_op_by_op(tmp_path):
    model = inception_resnet_block_model()
    qat = tfqat.quantize_model(model)
    first, last = qat.get_layer("block_1"), qat.get_layer("block_2")
    assert isinstance(first, QuantScaledAdd) and (first.scale, last.scale) == (0.17, 1.0)
    rules = {d.float_layers: d.rule for d in tfqat.record_of(qat).decisions}
    assert rules[("block_1", "block_1_ac")] == "custom_scale"
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 6, 3)).astype("float32")
    y = np.random.default_rng(2).integers(0, 5, 32)
    q16 = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
    tfqat.calibrate(q16, x)
    np.testing.assert_allclose(q16.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-2)

    qat.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)

    flatbuffer = tfqat.export_tflite(loaded)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    assert report.op_histogram["MUL"] == 1 and report.op_histogram["ADD"] == 2, \
        dict(report.op_histogram)
    assert report.op_histogram.get("QUANTIZE", 0) == 0, dict(report.op_histogram)
    op_by_op = op_fidelity(loaded, flatbuffer, x[:8])
    assert op_by_op.unmatched == (), str(op_by_op)
    assert "block_1_scaled_residual_fq" in {d.quantizer for d in op_by_op.diffs}, str(op_by_op)
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)

