"""The extension API: a user's own layers through quantize_model, fit, calibrate, export,
op_fidelity and layer_report, by each of the three ways to register them."""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

import tfqat

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _example():
    spec = importlib.util.spec_from_file_location("custom_layer", ROOT / "examples" / "custom_layer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _example()


@pytest.fixture(scope="module")
def digits():
    from tfqat.training import data

    return data.load_digits()


@pytest.fixture(scope="module")
def float_model(digits):
    keras.utils.set_random_seed(0)
    model = example.build_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(digits.x_train[:512], digits.y_train[:512], batch_size=32, epochs=2, verbose=0)
    return model


def test_without_the_registry_the_custom_layers_are_refused(float_model):
    with pytest.raises(tfqat.UnsupportedLayerError, match="block1"):
        tfqat.quantize_model(float_model)


def test_each_registration_is_recorded_with_its_rule(float_model):
    record = tfqat.record_of(tfqat.quantize_model(float_model, registry=example.make_registry()))
    rules = {d.float_layers[0]: d.rule for d in record.decisions}
    assert rules["block1"] == "conv_bn_block"
    assert rules["scale1"] == "int8_layer:ChannelScale"
    assert rules["hidden"] == "spec:ScaledDense"
    inner = record.quantizer("hidden_activation_fq")
    assert inner.owner == "hidden" and not inner.fixed
    assert not record.float_layers


@pytest.mark.parametrize("how", ["calibrate", "fit"])
def test_custom_layers_export_integer_only_and_match_op_by_op(float_model, digits, how, tmp_path):
    qat = tfqat.quantize_model(float_model, registry=example.make_registry())
    x = digits.x_train[:256]
    if how == "calibrate":
        ranges = tfqat.calibrate(qat, x, method="minmax")
        assert "hidden_activation_fq" in ranges  # a quantizer inside a layer is calibrated too
    else:
        qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        qat.fit(x, digits.y_train[:256], batch_size=32, epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    reloaded = keras.models.load_model(tmp_path / "qat.keras")
    assert tfqat.record_of(reloaded) == tfqat.record_of(qat)
    np.testing.assert_allclose(reloaded.predict(x[:16], verbose=0), qat.predict(x[:16], verbose=0),
                               atol=1e-6)
    flatbuffer = tfqat.export_tflite(reloaded)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only
    assert {"MUL", "GELU", "CONV_2D"} <= {op.name for op in report.ops}
    fidelity = tfqat.op_fidelity(reloaded, flatbuffer, digits.x_test[:64])
    assert not fidelity.unmatched and fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)
    rows = {row.name for row in tfqat.layer_report(float_model, reloaded, digits.x_test[:64]).rows}
    assert {"block1_fq", "scale1_fq", "hidden_fq"} <= rows


def test_spec_weights_are_fake_quantized_per_tensor(float_model):
    qat = tfqat.quantize_model(float_model, registry=example.make_registry())
    wrapper = qat.get_layer("hidden")
    kernel = wrapper.layer.kernel.numpy()
    quantized = keras.ops.convert_to_numpy(wrapper._quantized_weight("kernel", kernel, False))
    scale = np.abs(kernel).max() / 127
    np.testing.assert_allclose(quantized / scale, np.round(quantized / scale), atol=1e-3)
    assert not np.array_equal(quantized, kernel)


def test_registration_errors_name_the_problem():
    registry = tfqat.QuantRegistry()
    with pytest.raises(TypeError, match="Layer subclass"):
        registry.register_int8_layer(int)
    with pytest.raises(ValueError, match="scale='median'"):
        registry.register_int8_layer(example.ChannelScale, scale="median")
    with pytest.raises(ValueError, match="contain 0"):
        registry.register_int8_layer(example.ChannelScale, scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="fuses_relu=True needs scale='own'"):
        registry.register_int8_layer(example.ChannelScale, scale="input", fuses_relu=True)
    registry.register_int8_layer(example.ChannelScale)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_int8_layer(example.ChannelScale)


@pytest.mark.parametrize("fuses_relu", [False, True])
def test_a_relu_after_an_int8_layer_fuses_when_registered_so(fuses_relu):
    # ChannelScale is one MUL; the converter runs a ReLU read only by it inside the MUL,
    # rounding once. Registered with fuses_relu=True the QAT model rounds once too.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((6, 3))
    scaled = example.ChannelScale(name="scale")(keras.layers.Dense(4, name="dense")(inp))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(
        keras.layers.Flatten()(keras.layers.ReLU(name="relu")(scaled))))
    model.get_layer("scale").w.assign(np.array([0.5, -1.5, 2.0, 1.0], "float32"))
    registry = tfqat.QuantRegistry().register_int8_layer(example.ChannelScale,
                                                         fuses_relu=fuses_relu)
    qat = tfqat.quantize_model(model, registry=registry)
    x = rng.normal(0, 1, (64, 6, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    names = {layer.name for layer in qat.layers}
    # Fused: one tracked fake quant after the ReLU, none between the MUL and the ReLU.
    assert ("scale_fq" not in names) == fuses_relu, sorted(names)
    fidelity = tfqat.op_fidelity(qat, tfqat.export_tflite(qat), x[:16])
    if fuses_relu:
        assert not fidelity.unmatched and fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)


def test_a_spec_naming_a_missing_weight_is_refused(float_model):
    registry = tfqat.QuantRegistry().register_spec(
        example.ScaledDense, tfqat.QuantizeSpec(weights={"kernal": tfqat.WeightQuant()}))
    inp = keras.Input((4,))
    model = keras.Model(inp, example.ScaledDense(2, name="d")(inp))
    with pytest.raises(ValueError, match="kernal"):
        tfqat.quantize_model(model, registry=registry)


def test_registries_are_scoped(float_model):
    tfqat.quantize_model(float_model, registry=example.make_registry())
    with pytest.raises(tfqat.UnsupportedLayerError):
        tfqat.quantize_model(float_model)  # nothing leaked into the defaults
