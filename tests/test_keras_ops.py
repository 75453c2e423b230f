"""Keras ops recorded in Functional graphs (tfqat/rewrite/rules/keras_ops.py), each through
quantize_model -> calibrate -> export_tflite with the real converter and LiteRT: integer-only
with int8 I/O, the TFLite op expected, and op by op within 1 LSB of the QAT model with no
unmatched tensor."""

import keras
import numpy as np
import pytest

import tfqat
from tfqat.diagnostics.evaluation import compare_to_model
from tfqat.diagnostics.fidelity import op_fidelity
from tfqat.nn.quantizers import fake_quant_weights
from tfqat.rewrite.graph import numpy_op

L = keras.layers
ops = keras.ops


def conv(inp, channels=4, name="conv"):
    return L.Conv2D(channels, 1, name=name)(inp)


def head(x):
    return L.Dense(3, name="head")(L.Flatten()(x))


def get_item(inp):
    y = conv(inp)
    return head(L.Conv2D(2, 1, name="after")(y[:, 0:2]) + y[..., ::2][:, 1:3])


def transpose(inp):
    return head(conv(ops.transpose(conv(inp, name="c0"), (0, 2, 1, 3))))


def reshape_squeeze(inp):
    y = ops.expand_dims(ops.reshape(conv(inp), (-1, 9, 4)), 1)
    return head(L.Conv2D(2, 1, name="after")(ops.squeeze(y, 1)[:, None]))


def split(inp):
    a, b = ops.split(conv(inp), 2, axis=-1)
    return head(L.Conv2D(2, 1, name="a")(a) + b)


def reductions(inp):
    y = conv(inp)
    return head(ops.max(y, axis=1) + ops.min(y, axis=1))


def flip(inp):
    return head(conv(ops.flip(conv(inp, name="c0"), axis=1)))


def tile(inp):
    return head(conv(ops.tile(conv(inp, name="c0"), (1, 2, 1, 1))))


def repeat(inp):
    return head(conv(ops.repeat(conv(inp, name="c0"), 2, axis=1)))


def mean_sum(inp):
    y = conv(inp)
    return L.Dense(3, name="head")(ops.mean(y, axis=[1, 2]) + ops.sum(y, axis=[1, 2]))


def matmul_tensors(inp):
    y = ops.reshape(conv(inp), (-1, 9, 4))
    return head(ops.matmul(y, ops.transpose(conv(inp, name="c1"), (0, 3, 1, 2))[:, :, 0]))


def einsum(inp):
    y = ops.reshape(conv(inp), (-1, 9, 4))
    return head(ops.einsum("bic,bjc->bij", y, ops.reshape(conv(inp, name="c1"), (-1, 9, 4))))


def clip(low, high):
    def build(inp):
        return head(conv(ops.clip(conv(inp, name="c0"), low, high)))
    return build


def matmul_constant(inp):
    weights = np.random.default_rng(2).normal(0, 0.5, (16, 5)).astype("float32")
    return head(ops.matmul(conv(inp, 16), weights))


def einsum_constant(inp):
    weights = np.random.default_rng(2).normal(0, 0.5, (5, 16)).astype("float32")
    return head(ops.einsum("bhwc,dc->bhwd", conv(inp, 16), weights))


def op_as_output(inp):
    return ops.transpose(conv(inp), (0, 2, 1, 3))[:, 1:]


def concatenate_stack(inp):
    a, b = conv(inp, name="a"), conv(inp, name="b")
    return head(ops.stack([ops.concatenate([a, b], axis=-1), ops.concatenate([b, a], axis=-1)],
                          axis=1))


IMAGE = (3, 3, 3)
# name: (builder, input shape, TFLite ops that must appear, the rule's output policy)
CASES = {
    "get_item": (get_item, IMAGE, {"STRIDED_SLICE": 2}),
    "transpose": (transpose, IMAGE, {"TRANSPOSE": 1}),
    "reshape_squeeze": (reshape_squeeze, IMAGE, {"RESHAPE": 2}),
    "split": (split, IMAGE, {"SPLIT": 1}),
    "reductions": (reductions, IMAGE, {"REDUCE_MAX": 1, "REDUCE_MIN": 1}),
    "flip": (flip, IMAGE, {"REVERSE_V2": 1}),
    "tile": (tile, IMAGE, {"TILE": 1}),
    "repeat": (repeat, IMAGE, {}),
    "mean_sum": (mean_sum, IMAGE, {"MEAN": 1, "SUM": 1}),
    "matmul_tensors": (matmul_tensors, IMAGE, {"BATCH_MATMUL": 1}),
    "einsum": (einsum, IMAGE, {"BATCH_MATMUL": 1}),
    "clip": (clip(-0.5, 1.0), IMAGE, {"MINIMUM": 1, "MAXIMUM": 1}),
    "clip_relu6": (clip(0.0, 6.0), IMAGE, {"CONV_2D": 3}),
    "clip_positive": (clip(0.5, 2.0), IMAGE, {"MINIMUM": 1, "MAXIMUM": 1}),
    "matmul_constant": (matmul_constant, IMAGE, {"FULLY_CONNECTED": 1}),
    "einsum_constant": (einsum_constant, IMAGE, {}),
    "op_as_output": (op_as_output, IMAGE, {"TRANSPOSE": 1, "STRIDED_SLICE": 1}),
    "concatenate_stack": (concatenate_stack, IMAGE, {"CONCATENATION": 2, "PACK": 1}),
}


def exported(name):
    build, shape, _ = CASES[name]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="x")
    model = keras.Model(inp, build(inp))
    x = np.random.default_rng(1).normal(0, 1, (32, *shape)).astype("float32")
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, x)
    return model, qat, tfqat.export_tflite(qat), x


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_op_exports_integer_only_and_matches_the_qat_model(name):
    _, qat, flatbuffer, x = exported(name)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    for op, count in CASES[name][2].items():
        assert report.op_histogram.get(op, 0) >= count, (op, dict(report.op_histogram))
    print(dict(report.op_histogram))
    assert report.op_histogram.get("QUANTIZE", 0) == 0, dict(report.op_histogram)
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched, str(op_by_op)
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.max_diff_lsb <= 2.0 + 1e-3, comparison


def test_constant_matmul_operand_is_the_tflite_weight_exactly():
    # The QAT layer fake-quantizes the constant symmetric per tensor; the converter stores that
    # very grid (one scale, zero point 0), so the int8 weights times their scale are the QAT values.
    _, qat, flatbuffer, _ = exported("matmul_constant")
    layer = qat.get_layer("matmul_op")
    assert isinstance(layer, tfqat.KerasOpLayer) and layer.constant_bits == 8
    (op,) = [op for op in tfqat.inspect_tflite(flatbuffer).ops if op.name == "FULLY_CONNECTED"]
    weights = op.inputs[1]
    assert weights.dtype == "int8" and weights.scales.size == 1
    expected = np.random.default_rng(2).normal(0, 0.5, (16, 5)).astype("float32")
    np.testing.assert_allclose(weights.scales[0] * 127, np.abs(expected).max(), rtol=1e-6)


def ops_everywhere(inp):
    y = L.Conv2D(8, 1, activation="relu", name="c0")(inp)
    a, b = ops.split(ops.transpose(y, (0, 2, 1, 3)), 2, axis=-1)
    y = ops.concatenate([L.Conv2D(4, 1, name="c1")(a), ops.clip(b, -0.5, 1.0)], axis=-1)
    y = ops.mean(ops.reshape(y[:, 1:], (-1, 6, 8)), axis=1)
    return ops.matmul(y, np.random.default_rng(3).normal(0, 0.3, (8, 3)).astype("float32"))


def test_trained_qat_model_with_keras_ops_saves_loads_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input(IMAGE, name="x")
    qat = tfqat.quantize_model(keras.Model(inp, ops_everywhere(inp)))
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (32, *IMAGE)).astype("float32")
    y = rng.normal(0, 1, (32, 3)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)
    flatbuffer = tfqat.export_tflite(loaded)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    op_by_op = op_fidelity(loaded, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.0, 3.0), (-1.0, 1.0)])
def test_clip_the_converter_fuses_as_an_activation_is_refused_with_what_to_do(low, high):
    keras.backend.clear_session()  # the op is auto-named "clip"
    inp = keras.Input(IMAGE)
    model = keras.Model(inp, ops.clip(conv(inp), low, high))
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(model)
    message = str(info.value)
    assert f"'clip' (Clip to [{low:g}, {high:g}])" in message, message
    assert "keras.ops.clip(x, 0.0, 6.0)" in message and "exclude=('clip',)" in message


def test_lambda_is_refused_pointing_at_keras_ops():
    inp = keras.Input(IMAGE)
    model = keras.Model(inp, L.Lambda(lambda t: t[:, 1:], name="crop")(conv(inp)))
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(model)
    message = str(info.value)
    assert "'crop' (Lambda)" in message and "exclude=('crop',)" in message, message
    assert "keras.ops calls on the Functional graph instead of a Lambda" in message, message


def test_another_keras_op_is_refused_listing_the_supported_ones():
    inp = keras.Input(IMAGE)
    model = keras.Model(inp, ops.sin(conv(inp)))
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(model)
    message = str(info.value)
    assert "Keras op 'sin' (Sin)" in message and "Transpose" in message, message


def test_keras_op_layer_runs_the_op_in_its_name_scope_and_round_trips():
    layer = tfqat.KerasOpLayer(numpy_op("Minimum"), {"x2": 0.5}, name="upper")
    np.testing.assert_allclose(layer(np.array([0.0, 1.0], "float32")), [0.0, 0.5])
    copy = tfqat.KerasOpLayer.from_config(layer.get_config())
    assert type(copy.op).__name__ == "Minimum" and copy.arguments == {"x2": 0.5}
    np.testing.assert_allclose(copy(np.array([2.0], "float32")), [0.5])


def test_constant_operands_are_the_arrays_of_the_graph_call_only():
    # Evaluated on arrays (op_fidelity replays layers on .tflite values), the tensor operand is
    # an array too: only the array of the graph call is a constant, fake-quantized as a weight.
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 2)).astype("float32")
    layer = tfqat.KerasOpLayer(numpy_op("Matmul"), constant_bits=4)
    layer(keras.Input((3,)), weights)
    x = rng.normal(size=(5, 3)).astype("float32")
    quantized = np.asarray(fake_quant_weights(weights, 4, per_channel=False))
    assert np.abs(quantized - weights).max() > 1e-3
    np.testing.assert_allclose(layer(x, weights), x @ quantized, rtol=1e-5, atol=1e-6)


def test_branching_transpose_is_checked_op_by_op():
    # The transpose's output is read twice, so it gets its input's quantizer again (tied); its
    # .tflite tensor is found in the op's name scope, not confused with TF's `transpose/perm`.
    keras.backend.clear_session()
    inp = keras.Input((4, 4, 3), name="x")
    act = L.Activation("sigmoid", name="act")(L.UpSampling2D(name="up")(inp))
    swapped = ops.transpose(act, (0, 2, 1, 3))
    qat = tfqat.quantize_model(keras.Model(inp, L.Add(name="add")([swapped, swapped])))
    x = np.random.default_rng(0).uniform(0, 1, (16, 4, 4, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    op_by_op = op_fidelity(qat, tfqat.export_tflite(qat), x[:8])
    assert not op_by_op.unmatched and op_by_op.num_checked == 3, str(op_by_op)
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
