import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.export.tflite import _not_integer_only
from tfqat.diagnostics.evaluation import compare_to_model
from tfqat.export.reader import load_interpreter
from tfqat.diagnostics.evaluation import quantize_input
from ai_edge_litert.interpreter import Interpreter
from tiny_models import calibrate_quantizers, mixed_model, random_images, randomize_batchnorm


@pytest.fixture(scope="module")
def exported():
    keras.utils.set_random_seed(0)
    model = randomize_batchnorm(mixed_model())
    qat = tfqat.quantize_model(model)
    calibrate_quantizers(qat, random_images(32))
    return qat, tfqat.export_tflite(qat)


def test_export_is_integer_only_with_int8_io(exported):
    _, flatbuffer = exported
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    assert "QUANTIZE" not in report.op_histogram and "DEQUANTIZE" not in report.op_histogram
    assert report.op_histogram["CONV_2D"] == 4  # conv1, conv2, and both Dense as 1x1 convs
    assert report.op_histogram["DEPTHWISE_CONV_2D"] == 1
    assert report.outputs[0].scales[0] == pytest.approx(1 / 256)  # softmax output
    assert report.outputs[0].zero_points[0] == -128


def test_report_text_lists_ops_and_quantization(exported):
    text = str(tfqat.inspect_tflite(exported[1]))
    assert "integer-only: yes" in text and "CONV_2D x4" in text and "zp=-128" in text


def _weights_of(interpreter, report, op_name, layer_name):
    for op in report.ops:
        scope = re.compile(rf"/{layer_name}(_\d+)?/")  # Keras may suffix name scopes
        if op.name == op_name and any(scope.search(t.name) for t in op.outputs):
            weights = op.inputs[1]
            return interpreter.get_tensor(weights.index), weights.scales
    raise AssertionError(f"no {op_name} for {layer_name}")


@pytest.mark.parametrize("layer_name,op_name", [
    ("conv1", "CONV_2D"), ("conv2", "CONV_2D"), ("dw", "DEPTHWISE_CONV_2D"), ("fc", "CONV_2D")])
def test_exported_int8_weights_equal_fake_quantized_folded_weights(exported, layer_name, op_name):
    qat, flatbuffer = exported
    interpreter = load_interpreter(flatbuffer)
    interpreter.allocate_tensors()
    report = tfqat.inspect_tflite(flatbuffer)
    int8_weights, scales = _weights_of(interpreter, report, op_name, layer_name)
    layer = qat.get_layer(layer_name)
    fq = layer.quantized_kernel_view().numpy()
    if op_name == "DEPTHWISE_CONV_2D":  # TFLite [1, kh, kw, channels], ours [kh, kw, channels]
        dequantized = (int8_weights * scales)[0]
    else:  # TFLite [out, kh, kw, in], ours [kh, kw, in, out]
        dequantized = np.moveaxis(int8_weights * scales[:, None, None, None], 0, -1)
    assert int8_weights.dtype == np.int8 and np.abs(int8_weights).max() == 127
    np.testing.assert_allclose(dequantized, fq, rtol=1e-6, atol=1e-7)


def test_export_writes_the_file_atomically(exported, tmp_path):
    qat, flatbuffer = exported
    path = tmp_path / "m.tflite"
    assert tfqat.export_tflite(qat, str(path)) == path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_float_model_is_refused_with_a_hint():
    with pytest.raises(tfqat.ExportError, match="quantize_model"):
        tfqat.export_tflite(mixed_model())


def test_uncalibrated_model_is_refused_and_leaves_no_file(tmp_path):
    qat = tfqat.quantize_model(mixed_model())
    path = tmp_path / "m.tflite"
    with pytest.raises(tfqat.ExportError, match="never observed.*image_fq"):
        tfqat.export_tflite(qat, str(path))
    assert not path.exists()


def test_more_than_8_bits_is_refused():
    qat = tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(overrides={"fc": {"weight_bits": 12}}))
    with pytest.raises(tfqat.ExportError, match=r"fc \(weight_bits=12\)"):
        tfqat.export_tflite(qat)


@pytest.mark.parametrize("excluded", ["conv2", "logits"])
def test_excluded_layer_is_refused_by_name_and_keeps_old_file(tmp_path, excluded):
    # The converter would quietly quantize an excluded layer between fake quants;
    # export refuses instead, because the user asked for it to stay float.
    qat = tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(exclude=(excluded,)))
    calibrate_quantizers(qat, random_images(8))
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous")
    with pytest.raises(tfqat.ExportError, match=f"{excluded} \\((Conv2D|Dense)\\)"):
        tfqat.export_tflite(qat, str(path))
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_float_ops_are_reported_with_their_layers():
    model = mixed_model()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    report = tfqat.inspect_tflite(converter.convert())
    assert not report.integer_only and report.float_ops
    error = _not_integer_only(model, report)
    assert {"conv1", "conv2", "fc", "logits"} <= set(error.layer_names)
    assert "CONV_2D" in str(error) and "float ops" in str(error)


def test_not_integer_only_names_the_float_op_and_its_layer_first():
    # Issue 14: the message began with "DEQUANTIZE ... from layers: conv1_fq" (the int8 tensor
    # going into the float region) rather than the op that computes in float.
    qat = tfqat.quantize_model(_wave_model(), tfqat.QuantConfig(exclude=("wave",)))
    tfqat.calibrate(qat, np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32))
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat, allow_float_ops=True))
    assert [op.name for op in report.float_ops] == ["DEQUANTIZE", "SIN", "QUANTIZE"]
    error = _not_integer_only(qat, report)
    message = str(error)
    assert error.layer_names[0] == "wave", error.layer_names
    assert re.search(r"float ops: SIN \(op \d+\) in layer wave \(converted to and from "
                     r"int8 by DEQUANTIZE", message), message
    assert message.index("SIN") < message.index("DEQUANTIZE") < message.index("QUANTIZE (op")


class _MatmulLayer(keras.layers.Layer):
    """A user layer whose kernel reaches TFLite's FULLY_CONNECTED through a transpose."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units))

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_a_converter_failure_names_the_keras_layer_and_what_to_change():
    # Issue 14: converter errors came through as MLIR location lines ("loc(callsite(fused[...
    # 'tfl.transpose' op has mismatched quantized axes"). Following the advice exports.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    model = keras.Model(inp, _MatmulLayer(3, name="tiny")(L.Dense(4, name="dense")(inp)))
    registry = tfqat.QuantRegistry().register_spec(
        _MatmulLayer, tfqat.QuantizeSpec(weights={"kernel": tfqat.WeightQuant()}))
    x = np.random.default_rng(0).uniform(0, 1, (16, 8)).astype("float32")
    qat = tfqat.quantize_model(model, registry=registry)
    tfqat.calibrate(qat, x)
    with pytest.raises(tfqat.ExportError) as info:
        tfqat.export_tflite(qat)
    message = str(info.value)
    assert "at layer 'tiny': 'tfl.transpose' op has mismatched quantized axes" in message
    assert "QuantConfig(overrides={'tiny': {'per_channel': False}})" in message
    assert "loc(" not in message and "StatefulPartitionedCall" not in message
    qat = tfqat.quantize_model(
        model, tfqat.QuantConfig(overrides={"tiny": {"per_channel": False}}), registry=registry)
    tfqat.calibrate(qat, x)
    assert tfqat.inspect_tflite(tfqat.export_tflite(qat)).integer_only


def test_tflite_predictions_match_the_qat_model(exported):
    qat, flatbuffer = exported
    x = random_images(16, seed=5)
    interpreter = load_interpreter(flatbuffer)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    scale, zero_point = inp["quantization"]
    q = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    out_scale, out_zp = out["quantization"]
    tflite = (interpreter.get_tensor(out["index"]).astype(np.float32) - out_zp) * out_scale
    keras_out = qat.predict(x, verbose=0)
    assert np.abs(tflite - keras_out).max() / out_scale <= 2.0  # within 2 output LSBs


def _concat_model(shared):
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu6", name="conv_b")(
        a if shared else inputs)
    x = keras.layers.Concatenate(name="concat")([a, b])
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("shared", [False, True])
def test_concatenation_shares_its_output_scale_and_matches_tflite(shared):
    # Both branches take the concatenation's scale, also the one that feeds another layer
    # (conv_b, at that scale too): one quantizer, no requantizing QUANTIZE.
    qat = tfqat.quantize_model(_concat_model(shared))
    quantizers = {l.name for l in qat.layers if isinstance(l, tfqat.ActivationQuantizer)}
    assert "conv_b_fq" not in quantizers and "conv_a_fq" not in quantizers
    assert len(qat.get_layer("concat_fq")._inbound_nodes) == 3  # conv_a, conv_b, the concat
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    calibrate_quantizers(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only and "QUANTIZE" not in report.op_histogram, str(report)
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.max_diff_lsb <= 2.0 and comparison.agreement >= 0.98


def _wave_model():
    """A model with a Lambda (SIN) that no rule quantizes and TFLite has no int8 kernel for."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.Lambda(lambda t: tf.sin(t), name="wave")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(x)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_lambda_layer_is_refused_by_name_with_exclude_as_the_way_out():
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(_wave_model())
    message = str(info.value)
    assert "'wave' (Lambda)" in message and "exclude=('wave',)" in message
    assert "allow_float_ops=True" in message


def test_allow_float_ops_exports_a_hybrid_on_purpose_and_says_so(tmp_path):
    qat = tfqat.quantize_model(_wave_model(), tfqat.QuantConfig(exclude=("wave",)))
    assert type(qat.get_layer("wave")) is keras.layers.Lambda
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    tfqat.calibrate(qat, x)
    with pytest.raises(tfqat.ExportError, match=r"wave \(Lambda\).*allow_float_ops=True"):
        tfqat.export_tflite(qat)
    path = tmp_path / "hybrid.tflite"
    flatbuffer = tfqat.export_tflite(qat, str(path), allow_float_ops=True)
    report = tfqat.inspect_tflite(str(path))
    assert report.hybrid and report.float_ops_allowed and not report.integer_only
    assert [op.name for op in report.float_ops] == ["DEQUANTIZE", "SIN", "QUANTIZE"]
    assert report.op_histogram["CONV_2D"] == 3  # conv1, conv2 and logits stay int8
    assert "hybrid: float ops kept on purpose (allow_float_ops=True)" in str(report)
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.max_diff_lsb <= 2.0 + 1e-3 and comparison.agreement >= 0.95


def test_integer_only_exports_carry_no_hybrid_flag(exported):
    report = tfqat.inspect_tflite(exported[1])
    assert not report.float_ops_allowed and not report.hybrid
    assert "hybrid" not in str(report)


def test_allow_float_ops_with_nothing_float_left_says_so(exported):
    qat, _ = exported
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat, allow_float_ops=True))
    assert report.integer_only and report.float_ops_allowed and not report.hybrid
    assert "no float ops remain" in str(report)


# ---- issue 14: graphs the fuzzer (tests/test_fuzz_graphs.py) shrank to --------------------

L = keras.layers


def _check_exports_and_matches(model, x, config=None, train=False):
    """quantize -> calibrate (or a few fit steps: EMA ranges) -> export; integer-only, within
    1 LSB op by op, and XNNPACK runs it as the reference kernels do."""
    qat = tfqat.quantize_model(model, config)
    if train:
        qat.compile(keras.optimizers.SGD(1e-3), "mse", run_eagerly=True)
        qat.fit(x, np.zeros((len(x), *qat.output_shape[1:]), "float32"), batch_size=8, verbose=0)
    else:
        tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    outputs = []
    for interpreter in (load_interpreter(flatbuffer), Interpreter(model_content=bytes(flatbuffer))):
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], quantize_input(x, detail))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    reference, xnnpack = (o.astype(np.int32) for o in outputs)
    assert np.abs(reference - xnnpack).max() <= 2, "XNNPACK disagrees with the reference kernels"
    return qat, flatbuffer, report


def _images(shape=(8, 8, 3), n=32):
    return np.random.default_rng(0).uniform(0, 1, (n, *shape)).astype("float32")


@pytest.mark.parametrize("use_bias", [False, True])
def test_transposed_conv_with_fused_relu_and_zero_bias_exports(use_bias):
    # Issue 14 kind 2: a zero or absent bias left TRANSPOSE_CONV + RELU float.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2DTranspose(8, 3, activation="relu", use_bias=use_bias, name="tconv")(inp)
    model = keras.Model(inp, L.Dense(4, name="head")(L.Flatten()(x)))
    _, _, report = _check_exports_and_matches(model, _images())
    assert report.op_histogram["TRANSPOSE_CONV"] == 1 and report.op_histogram["RELU"] == 1


def test_transposed_conv_then_default_batchnorm_then_relu_exports():
    # Issue 14 kind 2: BN with default statistics folds into a zero bias.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2DTranspose(6, 3, use_bias=False, name="tconv")(inp)))
    model = keras.Model(inp, L.Dense(4)(L.Flatten()(x)))
    _check_exports_and_matches(model, _images())


def test_transposed_conv_with_4_bit_weights_exports_int8_values_on_the_4_bit_grid():
    # Issue 14 kind 3: 4-bit weights made an i4 TRANSPOSE_CONV operand the converter refuses.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Dense(4)(L.Flatten()(L.Conv2DTranspose(8, 3, name="tconv")(inp))))
    qat, flatbuffer, report = _check_exports_and_matches(
        model, _images(), tfqat.QuantConfig(weight_bits=4))
    interpreter = load_interpreter(flatbuffer)
    interpreter.allocate_tensors()
    (op,) = [op for op in report.ops if op.name == "TRANSPOSE_CONV"]
    weights = interpreter.get_tensor(op.inputs[1].index).astype(np.int32)
    assert op.inputs[1].dtype == "int8" and np.abs(weights).max() == 7
    # The same values as the QAT model's 4-bit fake quant.
    layer = qat.get_layer("tconv")
    expected = layer.quantized_kernel_view().numpy()  # [kh, kw, in, out]
    exported_kernel = np.transpose(weights * op.inputs[1].scales[0], (1, 2, 3, 0))  # [out,kh,kw,in]
    np.testing.assert_allclose(exported_kernel, expected, atol=1e-6)


@pytest.mark.parametrize("relu", ["relu", "relu6"])
def test_average_pooling_then_relu_exports(relu):
    # Issue 14 kind 4: "'tfl.average_pool_2d' op quantization parameters violate the same
    # scale constraint" when a ReLU after the pool had its own fake quant.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.Activation(relu)(L.AveragePooling2D(2, name="pool")(x))
    model = keras.Model(inp, L.Dense(4)(L.Flatten()(x)))
    _, _, report = _check_exports_and_matches(model, _images())
    assert report.op_histogram["AVERAGE_POOL_2D"] == 1 and "QUANTIZE" not in report.op_histogram


def test_chained_nearest_upsampling_then_conv_exports():
    # Issue 14 kind 5: two nearest UpSampling2D (ops.repeat) then Conv2D crashed the converter.
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(L.UpSampling2D()(L.UpSampling2D()(inp)))
    model = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    qat, _, report = _check_exports_and_matches(model, _images((4, 4, 3)))
    assert report.op_histogram["RESIZE_NEAREST_NEIGHBOR"] == 2
    # The resize that replaces UpSampling2D gives the same values, also for odd factors.
    x = _images((3, 5, 2), 2)
    np.testing.assert_array_equal(tfqat.nn.layers.NearestUpSampling2D((2, 3))(x),
                                  L.UpSampling2D((2, 3))(x))


def test_activation_bits_below_8_are_refused_at_export_naming_layers():
    # Issue 14 kind 6: the .tflite used 8-bit scales where the QAT model rounded to 7 bits.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Dense(4, name="head")(L.Flatten()(L.Conv2D(4, 3, name="conv")(inp))))
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(
        overrides={"conv": {"activation_bits": 7}}))
    tfqat.calibrate(qat, _images())
    with pytest.raises(tfqat.ExportError, match=r"conv_fq \(activation_bits=7\)") as err:
        tfqat.export_tflite(qat)
    assert "head_fq" not in str(err.value) and "activation_bits=8" in str(err.value)


def _dead_model():
    # A ReLU conv that outputs zeros on [0, 1) inputs, then a BN with a non-zero beta.
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(2, 1, activation="relu", kernel_initializer=keras.initializers.Constant(-1.0),
                 name="dead")(inp)
    x = L.BatchNormalization(beta_initializer=keras.initializers.Constant([0.5, -0.3]),
                             name="bn")(x)
    return keras.Model(inp, L.Dense(4, name="head")(L.Flatten()(x)))


@pytest.mark.parametrize("train", [False, True], ids=["calibrated", "ema"])
def test_dead_activation_gets_a_range_that_keeps_the_next_bias_in_int32(train):
    # Issue 14 kind 7: a 1e-6-wide range gave the BN's int32 bias a scale of ~1e-10, and every
    # bias value saturated at +-2**31; XNNPACK refused or crashed on the model.
    keras.utils.set_random_seed(0)
    qat, flatbuffer, report = _check_exports_and_matches(_dead_model(), _images(), train=train)
    lo, hi = qat.get_layer("dead_fq").current_range()
    assert hi - lo >= tfqat.nn.quantizers.MIN_ACTIVATION_RANGE - 1e-9
    interpreter = load_interpreter(flatbuffer)
    interpreter.allocate_tensors()
    for op in report.ops:
        if len(op.inputs) > 2 and op.inputs[2].dtype == "int32":
            bias = interpreter.get_tensor(op.inputs[2].index)
            assert np.abs(bias.astype(np.int64)).max() < 2**31 - 1, op.name


def _concat_cases():
    def own_scale_input(inp):
        # Issue 14 kind 1: the conv branch was clipped at the input's scale (274 LSB).
        return L.Concatenate(name="cat")([L.Conv2D(2, 3, padding="same", name="conv")(inp), inp])

    def relu_after(inp):
        # Issue 14 kind 1: a fused ReLU left CONCATENATION and RELU float.
        a, b = L.Conv2D(2, 3, padding="same")(inp), L.Conv2D(2, 1)(inp)
        return L.ReLU(name="relu")(L.Concatenate(name="cat")([a, b]))

    def fan_out(inp):
        # One tensor read by two concatenations: the first shares its scale, the second
        # requantizes it; a chain (cat2 reads cat1) shares one scale.
        x = L.Conv2D(4, 1, activation="relu", name="x")(inp)
        cat1 = L.Concatenate(name="cat1")([x, L.Conv2D(2, 3, padding="same", name="a")(x)])
        cat2 = L.Concatenate(name="cat2")([cat1, L.Conv2D(2, 1, name="b")(cat1)])
        cat3 = L.Concatenate(name="cat3")([x, L.Conv2D(2, 1, name="c")(inp)])
        return L.Concatenate(name="top")([L.GlobalAveragePooling2D(keepdims=True)(cat2),
                                          L.GlobalAveragePooling2D(keepdims=True)(cat3)])

    return {"own_scale_input": own_scale_input, "relu_after": relu_after, "fan_out": fan_out}


@pytest.mark.parametrize("name", sorted(_concat_cases()))
def test_concatenate_shares_scales_without_clipping(name):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = _concat_cases()[name](inp)
    model = keras.Model(inp, L.Dense(4, name="head")(L.Flatten()(x)))
    data = _images()
    qat, flatbuffer, report = _check_exports_and_matches(model, data)
    comparison = compare_to_model(qat, flatbuffer, data)
    assert comparison.max_diff_lsb <= 2.0 + 1e-3, comparison
    if name == "relu_after":
        assert report.op_histogram["RELU"] == 1


def _dense_block(x, name, layers=2):
    for index in range(layers):
        y = L.ReLU(name=f"{name}_{index}_relu")(L.BatchNormalization(name=f"{name}_{index}_bn")(x))
        y = L.Conv2D(4, 3, padding="same", use_bias=False, name=f"{name}_{index}_conv")(y)
        x = L.Concatenate(name=f"{name}_{index}_concat")([x, y])
    return x


def _tiny_densenet(inp):
    """DenseNet121's structure, small: stem conv -> padding -> max pool, two dense blocks
    joined by a transition (BN -> ReLU -> 1x1 conv -> average pool)."""
    x = L.ReLU(name="conv1_relu")(L.BatchNormalization(name="conv1_bn")(
        L.Conv2D(4, 3, strides=2, use_bias=False, name="conv1_conv")(L.ZeroPadding2D(name="pad1")(inp))))
    x = L.MaxPooling2D(3, strides=2, name="pool1")(L.ZeroPadding2D(name="pad2")(x))
    x = _dense_block(x, "block1")
    x = L.ReLU(name="pool2_relu")(L.BatchNormalization(name="pool2_bn")(x))
    x = L.AveragePooling2D(2, strides=2, name="pool2_pool")(L.Conv2D(6, 1, name="pool2_conv")(x))
    x = _dense_block(x, "block2")
    x = L.GlobalAveragePooling2D(name="avg_pool")(L.ReLU()(L.BatchNormalization(name="bn")(x)))
    return L.Dense(3, name="predictions")(x)


def test_densenet_blocks_and_transitions_need_no_requantizing_quantize_op():
    # Issue 14: DenseNet121 kept 4 int8->int8 QUANTIZE ops, at the stem's max pool and the
    # transitions' average pools (each output at its conv's scale, requantized for the next
    # block's concatenation). The conv before them now takes the concatenation's scale.
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    model = randomize_batchnorm(keras.Model(inp, _tiny_densenet(inp)))
    x = _images((16, 16, 3))
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    assert report.integer_only and report.op_histogram["CONCATENATION"] == 4 and report.op_histogram["AVERAGE_POOL_2D"] == 1
    assert report.op_histogram.get("QUANTIZE", 0) == 0, dict(report.op_histogram)


@pytest.mark.slow
def test_densenet121_concatenations_need_no_requantizing_quantize_op():
    # Issue 14 kind 1: the old policy gave DenseNet121 51 requantizing QUANTIZE ops. Each dense
    # block shares one scale, and the conv before each block's input pool computes at it.
    keras.utils.set_random_seed(0)
    model = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10)
    qat = tfqat.quantize_model(model)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only and report.op_histogram["CONCATENATION"] == 58
    assert report.op_histogram.get("QUANTIZE", 0) == 0, dict(report.op_histogram)
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:4])
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)


def _int8_settings(converter):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter


def test_savedmodel_and_keras_export_paths(exported, tmp_path):
    """The other ways out of Keras, as README's "Other export paths" describes them."""
    qat, flatbuffer = exported
    # Keras's SavedModel export, converted with export_tflite's settings: integer-only.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # this path needs no warning
        qat.export(str(tmp_path / "keras_sm"), format="tf_saved_model", verbose=False)
    converted = _int8_settings(
        tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "keras_sm"))).convert()
    assert tfqat.inspect_tflite(converted).integer_only
    # Keras's LiteRT export converts with no int8 settings: a float model, with a warning
    # that names export_tflite.
    with pytest.warns(UserWarning, match=r"tfqat\.export_tflite"):
        qat.export(str(tmp_path / "keras.tflite"), format="litert", verbose=False)
    litert = tfqat.inspect_tflite(str(tmp_path / "keras.tflite"))
    assert not litert.integer_only and "float32" in {t.dtype for t in litert.inputs}
    # tf.saved_model.save writes a SavedModel the converter cannot convert: warned at save time.
    with pytest.warns(UserWarning, match=r"from_saved_model cannot convert.*export_tflite"):
        tf.saved_model.save(qat, str(tmp_path / "tf_sm"))
    with pytest.raises(Exception, match="FakeQuantWithMinMaxVarsPerChannel"):
        _int8_settings(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "tf_sm"))).convert()


def test_export_is_quiet_unless_verbose(exported, capfd, monkeypatch):
    qat, _ = exported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfqat.export_tflite(qat)
    out, err = capfd.readouterr()
    assert "TensorSpec" not in out and "Saved artifact" not in out and "I0000" not in err
    assert not [w for w in caught if "Statistics for quantized" in str(w.message)]
    monkeypatch.setenv("TFQAT_VERBOSE", "1")
    with pytest.warns(UserWarning, match="Statistics for quantized inputs"):
        tfqat.export_tflite(qat)


def _equal_bias_model(kind):
    """A linear layer whose exported per-channel bias holds one non-zero value in every
    channel, and whose weight channels have very different ranges (so different scales)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((6, 6, 3))
    layer = {"conv": L.Conv2D(4, 3, padding="same", name="linear"),
             "conv_bn": L.Conv2D(4, 3, padding="same", use_bias=False, name="linear"),
             "depthwise": L.DepthwiseConv2D(3, padding="same", name="linear"),
             "dense": L.Dense(4, name="linear"),
             "tconv": L.Conv2DTranspose(4, 3, name="linear")}[kind]
    x = layer(inp)
    if kind == "conv_bn":
        bn = L.BatchNormalization(beta_initializer=keras.initializers.Constant(0.5), name="bn")
        x = bn(x)  # default moving statistics: the folded bias is beta in every channel
    model = keras.Model(inp, L.Dense(3, name="head")(L.Flatten()(x)))
    kernel = rng.normal(0, 1, layer.kernel.shape).astype("float32")
    channels = kernel.shape[-2] if kind in ("depthwise", "tconv") else kernel.shape[-1]
    spread = np.array([0.1, 1.0, 3.0, 0.5], "float32")[:channels]
    # Depthwise and transposed kernels keep their channels on axis -2.
    layer.kernel.assign(kernel * (spread[:, None] if kind in ("depthwise", "tconv") else spread))
    if kind != "conv_bn":
        layer.bias.assign(np.full(layer.bias.shape, 0.5, "float32"))
    return model


@pytest.mark.parametrize("kind", ["conv", "conv_bn", "depthwise", "dense", "tconv"])
def test_a_per_channel_bias_with_one_value_in_every_channel_exports_exactly(kind):
    # TF 2.21's converter quantizes a splat per-channel bias with channel 0's scale for all
    # channels (measured 94 LSB off at the conv, silently); export moves one channel by a few
    # ulps while converting and restores the variables.
    x = _images((6, 6, 3))
    qat = tfqat.quantize_model(_equal_bias_model(kind))
    tfqat.calibrate(qat, x)
    before = [v.numpy().copy() for v in qat.weights]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatbuffer = tfqat.export_tflite(qat)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, qat.weights))
    # export_tflite's own conversion does not warn about tf.saved_model.save.
    assert not [w for w in caught if "tf.saved_model.save" in str(w.message)]
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)


def test_the_converter_still_quantizes_a_splat_per_channel_bias_with_one_channels_scale():
    # The converter fact export_tflite works around: without the nudge, every channel of the
    # bias gets round(0.5 / (s_in * s_w[0])). If this fails, the workaround can go.
    from tfqat.export.reader import read_tflite
    qat = tfqat.quantize_model(_equal_bias_model("conv"))
    tfqat.calibrate(qat, _images((6, 6, 3)))
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with qat.converting():
        model = read_tflite(converter.convert())
    (bias,) = [op.inputs[2] for op in model.ops  # the 4-channel conv, not the 1x1 head
               if op.name == "CONV_2D" and op.inputs[2].scales.size == 4]
    values = model.constants[bias.index]
    assert len(set(bias.scales.tolist())) == 4 and len(set(values.tolist())) == 1, values
