"""The remaining single layers of the transformer issue, in tests/test_layer_set.py's style.

Each case is a tiny model: quantize_model -> fit -> save/load -> export_tflite with the real
converter -> integer-only with int8 I/O, the layer's TFLite ops present, no requantizing
QUANTIZE, and op_fidelity within 1 LSB with no unmatched tensor (inner tensors of composite
layers included). Layers without an integer-only form must be refused with their name.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
import layer_checks
from layer_checks import check_matches_float_at_16_bits, fit_briefly, save_and_load
from tfqat.diagnostics.evaluation import run_tflite
from tfqat.diagnostics.fidelity import op_fidelity
from tfqat.diagnostics.int8_eval import evaluate_int8
from tiny_models import randomize_batchnorm

L = keras.layers


def head(x):
    return L.Dense(5, name="head")(L.Flatten()(x))


def prelu(**kwargs):
    def build(inp):
        return head(L.PReLU(name="prelu", **kwargs)(L.Conv2D(4, 3, name="conv")(inp)))
    return build


def randomize(model, seed=0):
    """Trained-looking weights: PReLU alphas of both signs (Keras starts them at 0), and
    non-trivial GroupNormalization gamma/beta."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            layer.alpha.assign(rng.uniform(-0.4, 0.6, layer.alpha.shape).astype("float32"))
        if isinstance(layer, L.GroupNormalization):
            for weight, base in ((layer.gamma, 1.0), (layer.beta, 0.0)):
                if weight is not None:
                    weight.assign(base + rng.normal(0, 0.3, weight.shape).astype("float32"))
    return model


def group_norm(**kwargs):
    def build(inp):
        return head(L.GroupNormalization(name="gn", **kwargs)(L.Conv2D(6, 1, name="conv")(inp)))
    return build


def unit_norm(**kwargs):
    def build(inp):
        return head(L.UnitNormalization(name="un", **kwargs)(L.Conv2D(4, 1, name="conv")(inp)))
    return build


def branches(inp, count=2):
    return [L.Conv2D(4, 1, name=f"branch_{i}")(inp) for i in range(count)]


def maximum(inp):
    return head(L.Maximum(name="max")(branches(inp)))


def nested_max_min(inp):
    a, b, c = branches(inp, 3)
    return head(L.Minimum(name="min")([L.Maximum(name="max")([a, b]), c]))


def maximum_of_a_branching_tensor(inp):
    # branch_0 is read by the Maximum and by the head: it keeps its own scale, and the
    # converter requantizes it once for MAXIMUM.
    a, b = branches(inp)
    x = L.Maximum(name="max")([a, b])
    return L.Dense(5, name="head")(L.Flatten()(L.Concatenate(name="cat")([x, L.ReLU()(a)])))


def average(count):
    def build(inp):
        return head(L.Average(name="avg")(branches(inp, count)))
    return build


def random_crop(inp):
    return head(L.Conv2D(4, 3, name="conv")(L.RandomCrop(5, 4, seed=1, name="crop")(inp)))


def einsum(equation, output_shape, bias_axes=None, activation=None, reshape=None):
    def build(inp):
        x = L.Dense(4, name="proj")(inp)
        if reshape is not None:
            x = L.Reshape(reshape, name="view")(x)
        x = L.EinsumDense(equation, output_shape, bias_axes=bias_axes, activation=activation,
                          name="einsum")(x)
        return head(x)
    return build


def grouped_conv1d(groups, filters):
    def build(inp):
        x = L.Conv1D(filters, 3, groups=groups, use_bias=False, name="grouped")(
            L.Dense(4, name="proj")(inp))
        return head(L.ReLU()(L.BatchNormalization(name="bn")(x)))
    return build


def grouped_conv2d(groups, filters, bn=True, **kwargs):
    def build(inp):
        x = L.Conv2D(filters, 3, groups=groups, padding="same", use_bias=not bn, name="grouped",
                     **kwargs)(L.Conv2D(8, 1, name="proj")(inp))
        if bn:
            x = L.ReLU()(L.BatchNormalization(name="bn")(x))
        return head(x)
    return build


IMAGE = (6, 6, 3)
SEQUENCE = (6, 4)
LN_OPS = {"MEAN": 2, "SUB": 1, "MUL": 3, "ADD": 2, "RSQRT": 1}
# name: (builder, input shape, TFLite ops that must appear)
CASES = {
    "prelu_shared": (prelu(shared_axes=[1, 2]), IMAGE, {"PRELU": 1}),
    "prelu_full": (prelu(), IMAGE, {"PRELU": 1}),
    "maximum": (maximum, IMAGE, {"MAXIMUM": 1}),
    "nested_max_min": (nested_max_min, IMAGE, {"MAXIMUM": 1, "MINIMUM": 1}),
    "maximum_of_a_branching_tensor": (maximum_of_a_branching_tensor, IMAGE, {"MAXIMUM": 1}),
    "average": (average(2), IMAGE, {"ADD": 1, "MUL": 1}),
    "average_of_three": (average(3), IMAGE, {"ADD": 2, "MUL": 1}),
    "group_norm": (group_norm(groups=3), IMAGE, {**LN_OPS, "RESHAPE": 2}),
    "group_norm_instance": (group_norm(groups=-1, center=False), IMAGE,
                            {"MEAN": 2, "SUB": 1, "MUL": 3, "ADD": 1, "RSQRT": 1}),
    "group_norm_one_group_no_scale": (group_norm(groups=1, scale=False), IMAGE,
                                      {"MEAN": 2, "SUB": 1, "MUL": 2, "ADD": 2, "RSQRT": 1}),
    "unit_norm": (unit_norm(), IMAGE, {"SUM": 1, "RSQRT": 1, "MUL": 2}),
    "unit_norm_axes": (unit_norm(axis=[1, 2]), IMAGE, {"SUM": 1, "RSQRT": 1, "MUL": 2}),
    "random_crop": (random_crop, (8, 7, 3), {"STRIDED_SLICE": 1}),
    "einsum_matrix": (einsum("ab,bc->ac", 6, "c"), (4,), {"CONV_2D": 1}),
    "einsum_sequence_relu": (einsum("abc,cd->abd", (6, 8), "d", "relu"), SEQUENCE,
                             {"CONV_2D": 1}),
    "einsum_heads": (einsum("abc,cde->abde", (6, 2, 3), "de"), SEQUENCE, {"CONV_2D": 1}),
    "einsum_merge_heads": (einsum("abde,dec->abc", (6, 5), "c", reshape=(6, 2, 2)), SEQUENCE,
                           {"CONV_2D": 1}),
    "einsum_ellipsis": (einsum("...b,bc->...c", 5), SEQUENCE, {"CONV_2D": 1}),
    # A Dense between int8 TRANSPOSEs: output axes permuted, the contracted axis not last
    # (token mixing), both, heads first.
    "einsum_output_transposed": (einsum("abc,cd->adb", (5, 6), "d"), SEQUENCE,
                                 {"CONV_2D": 1, "TRANSPOSE": 1}),
    "einsum_token_mixing": (einsum("abc,bd->acd", (4, 5), "d"), SEQUENCE,
                            {"CONV_2D": 1, "TRANSPOSE": 1}),
    "einsum_token_mixing_back": (einsum("abc,bd->adc", (5, 4), None, "relu"), SEQUENCE,
                                 {"CONV_2D": 1, "TRANSPOSE": 2}),
    "einsum_heads_first": (einsum("abc,cde->adbe", (2, 6, 3), "de"), SEQUENCE,
                           {"CONV_2D": 1, "TRANSPOSE": 1}),
    # A weight per position: one BATCH_MATMUL with a constant int8 operand.
    "einsum_per_position": (einsum("abc,bcd->abd", (6, 5)), SEQUENCE, {"BATCH_MATMUL": 1}),
    "einsum_per_position_relu": (einsum("abc,cbd->adb", (5, 6), None, "relu"), SEQUENCE,
                                 {"BATCH_MATMUL": 1}),
    "conv1d_two_groups": (grouped_conv1d(2, 6), SEQUENCE, {"CONV_2D": 2}),
    "conv1d_group_per_channel": (grouped_conv1d(4, 8), SEQUENCE, {"CONV_2D": 2}),
    # proj, grouped and the head: the grouped conv stays one CONV_2D.
    "conv2d_two_groups_bn": (grouped_conv2d(2, 6), IMAGE, {"CONV_2D": 3}),
    "conv2d_four_groups": (grouped_conv2d(4, 12, bn=False, strides=2), IMAGE, {"CONV_2D": 3}),
    "conv2d_four_groups_bn_dilated": (grouped_conv2d(4, 4, dilation_rate=2), IMAGE,
                                      {"CONV_2D": 3}),
}
# QUANTIZE (int8 -> int8) ops a case needs: a Maximum's input read elsewhere too keeps its
# own scale, and MAXIMUM needs its inputs at its output's scale.
REQUANTIZE_OPS = {"maximum_of_a_branching_tensor": 1}


def float_model(name):
    build, shape, _ = CASES[name]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="x")
    return randomize_batchnorm(randomize(keras.Model(inp, build(inp))))


def inputs(name, n=32, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, *CASES[name][1])).astype("float32")


def check_export(qat, x, name):
    _, report = layer_checks.check_export(qat, x, CASES[name][2],
                                          quantize_ops=REQUANTIZE_OPS.get(name, 0))
    return report


# The fast suite runs these; the other variants run in the slow suite (each ~5 s of CPU).
FAST_CASES = ("prelu_shared", "maximum", "nested_max_min", "maximum_of_a_branching_tensor",
              "average", "group_norm", "unit_norm", "random_crop", "einsum_heads",
              "conv1d_two_groups", "conv2d_two_groups_bn", "conv2d_four_groups",
              "einsum_token_mixing_back", "einsum_per_position")


def fast_or_slow(names):
    return [name if name in FAST_CASES else pytest.param(name, marks=pytest.mark.slow)
            for name in names]


@pytest.mark.parametrize("name", fast_or_slow(sorted(CASES)))
def test_layer_fits_saves_loads_and_exports_integer_only(tmp_path, name):
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name, 48)
    fit_briefly(qat, x, np.random.default_rng(2).integers(0, 5, len(x)))
    check_export(save_and_load(qat, tmp_path / "qat.keras", x), x, name)


def test_prelu_alpha_is_the_per_tensor_int8_constant_of_the_tflite():
    qat = tfqat.quantize_model(float_model("prelu_full"))
    x = inputs("prelu_full")
    tfqat.calibrate(qat, x)
    report = check_export(qat, x, "prelu_full")
    (op,) = [op for op in report.ops if op.name == "PRELU"]
    alpha = op.inputs[1]
    layer = qat.get_layer("prelu")
    bound = np.abs(layer.alpha.numpy()).max()
    assert alpha.dtype == "int8" and alpha.scales.size == 1 and int(alpha.zero_points[0]) == 0
    np.testing.assert_allclose(alpha.scales[0], bound / 127, rtol=1e-6)
    levels = layer.quantized_alpha().numpy() / (bound / 127)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


@pytest.mark.parametrize("name", ["maximum", "nested_max_min"])
def test_max_min_inputs_share_the_output_quantizer(name):
    qat = tfqat.quantize_model(float_model(name))
    record = tfqat.record_of(qat)
    root = "min" if name == "nested_max_min" else "max"
    by_layer = {d.float_layers: d for d in record.decisions}
    assert by_layer[(root,)].scale_policy == "own"
    members = [("branch_0",), ("branch_1",)] + ([("branch_2",), ("max",)] if root == "min" else [])
    for member in members:
        decision = by_layer[member]
        assert decision.scale_policy == "max_min", decision
        assert decision.output_quantizer == f"{root}_fq", decision
    tfqat.calibrate(qat, inputs(name))
    flatbuffer = tfqat.export_tflite(qat)
    ops = tfqat.inspect_tflite(flatbuffer).ops
    scales = {(float(t.scales[0]), int(t.zero_points[0])) for op in ops
              if op.name in ("MAXIMUM", "MINIMUM") for t in (*op.inputs, *op.outputs)}
    assert len(scales) == 1, scales


def test_a_wide_maximum_is_refused_with_the_layer_named():
    inp = keras.Input(IMAGE, name="x")
    model = keras.Model(inp, head(L.Maximum(name="wide_max")(branches(inp, 3))))
    with pytest.raises(tfqat.UnsupportedLayerError, match="'wide_max'.*two"):
        tfqat.quantize_model(model)


def test_group_norm_on_another_axis_is_refused_with_the_layer_name():
    inp = keras.Input((6, 6, 4), name="x")
    model = keras.Model(inp, head(L.GroupNormalization(2, axis=1, name="gn_axis1")(inp)))
    with pytest.raises(ValueError, match="gn_axis1.*axis"):
        tfqat.quantize_model(model)


@pytest.mark.parametrize("name", ["group_norm", "unit_norm", "prelu_shared", "average",
                                  "conv1d_two_groups", "conv2d_two_groups_bn",
                                  "conv2d_four_groups"])
def test_qat_layer_matches_the_float_layer_at_16_bits(name):
    # PReLU's alpha stays 8-bit (the converter's int8 constant): up to 1/254 of alpha * x off.
    check_matches_float_at_16_bits(float_model(name), inputs(name, 16), atol=2e-2)


def test_random_crop_crops_at_random_in_training_and_the_center_at_inference():
    qat = tfqat.quantize_model(float_model("random_crop"))
    crop = qat.get_layer("crop")
    assert isinstance(crop, tfqat.nn.layers.CenterCropAtInference)
    x = inputs("random_crop", 4)
    np.testing.assert_array_equal(crop(x, training=False).numpy(), x[:, 1:6, 1:5])
    crops = {tuple(crop(x, training=True).numpy()[0, 0, :, 0]) for _ in range(12)}
    assert len(crops) > 1
    assert {c for c in crops} <= {tuple(x[0, r, c:c + 4, 0]) for r in range(4) for c in range(4)}


def test_random_crop_of_a_target_size_equal_to_the_input_leaves_no_op():
    keras.utils.set_random_seed(0)
    inp = keras.Input(IMAGE, name="x")
    model = keras.Model(inp, head(L.Conv2D(4, 3, name="conv")(L.RandomCrop(6, 6)(inp))))
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, inputs("prelu_full"))
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat))
    assert report.integer_only and "STRIDED_SLICE" not in report.op_histogram, str(report)


def test_random_crop_to_a_larger_size_is_refused_with_the_layer_name():
    inp = keras.Input(IMAGE, name="x")
    model = keras.Model(inp, head(L.RandomCrop(8, 4, name="grow_crop")(inp)))
    with pytest.raises(ValueError, match="grow_crop.*8x4"):
        tfqat.quantize_model(model)


def test_einsum_dense_per_tensor_is_fully_connected_and_matches_the_float_layer():
    model = float_model("einsum_heads")
    x = inputs("einsum_heads")
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(per_channel=False))
    tfqat.calibrate(qat, x)
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat))
    # proj, einsum and head
    assert report.integer_only and report.op_histogram["FULLY_CONNECTED"] == 3, str(report)
    q16 = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
    tfqat.calibrate(q16, x)
    np.testing.assert_allclose(q16.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


EINSUM_CASES = ["einsum_matrix", "einsum_sequence_relu", "einsum_heads", "einsum_merge_heads",
                "einsum_ellipsis", "einsum_output_transposed", "einsum_token_mixing",
                "einsum_token_mixing_back", "einsum_heads_first", "einsum_per_position",
                "einsum_per_position_relu"]


def randomize_einsum_bias(model, seed=3):
    layer = model.get_layer("einsum")
    if layer.bias is not None:  # Keras starts it at 0, which would hide a misplaced bias
        layer.bias.assign(np.random.default_rng(seed).normal(0, 0.5, layer.bias.shape))
    return model


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("name", EINSUM_CASES)
def test_einsum_dense_exports_integer_only_and_bypassed_qat_is_the_float_layer(name,
                                                                               per_channel):
    model = randomize_einsum_bias(float_model(name))
    x = inputs(name, 16)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(per_channel=per_channel))
    # Quantizers bypassed (before quant_delay, training): the float model exactly.
    bypassed = tfqat.quantize_model(model, tfqat.QuantConfig(per_channel=per_channel,
                                                            quant_delay=10**6))
    np.testing.assert_allclose(bypassed(x, training=True).numpy(), model(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    for op, count in CASES[name][2].items():
        op = "FULLY_CONNECTED" if op == "CONV_2D" and not per_channel else op
        assert report.op_histogram[op] >= count, (op, dict(report.op_histogram))
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert op_by_op.unmatched == () and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    # evaluate_int8 (a BATCH_MATMUL's constant operand included) is the reference kernels.
    np.testing.assert_array_equal(evaluate_int8(flatbuffer, x).outputs.raw,
                                  run_tflite(flatbuffer, x, kernels="reference").raw)
    if "BATCH_MATMUL" in report.op_histogram:
        (op,) = [op for op in report.ops if op.name == "BATCH_MATMUL"]
        weights = op.inputs[1]
        assert weights.dtype == "int8" and weights.scales.size == 1 and len(weights.shape) == 3
        assert op.inputs[0].shape[0] == 1  # the batch axis stays first
        reference = run_tflite(flatbuffer, x, kernels="reference").raw.astype(int)
        for kernels in ("builtin", "xnnpack"):  # LiteRT's other kernels run it too
            assert np.abs(run_tflite(flatbuffer, x, kernels=kernels).raw - reference).max() <= 1


def test_per_tensor_dense_on_a_sequence_with_a_bias_is_one_integer_fully_connected():
    # As a tensordot, the converter left FULLY_CONNECTED + RESHAPE + ADD float (TF 2.21).
    keras.utils.set_random_seed(0)
    inp = keras.Input(SEQUENCE, name="x")
    dense = L.Dense(4, name="seq_dense")
    model = keras.Model(inp, head(dense(inp)))
    dense.bias.assign(np.linspace(-1, 1, 4).astype("float32"))
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(per_channel=False))
    x = np.random.default_rng(1).normal(0, 1, (16, *SEQUENCE)).astype("float32")
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only and report.op_histogram["FULLY_CONNECTED"] == 2, str(report)
    assert "ADD" not in report.op_histogram, str(report)
    assert op_fidelity(qat, flatbuffer, x[:8]).max_diff_lsb <= 1.0 + 1e-3


@pytest.mark.parametrize("equation, output_shape, bias_axes, message", [
    ("abc,bcd->abd", (6, 8), "d", "per position of axis 'b'.*BATCH_MATMUL.*bias"),
    ("abc,cd->abd", (6, 8), "bd", "bias"),
    ("abc,bc->ab", (6,), None, "per position of axis 'b' but is not a BATCH_MATMUL"),
    ("abc,cd->ad", (8,), None, "not a Dense between transposes.*sums an axis away"),
])
def test_other_einsum_equations_are_refused_with_the_equation(equation, output_shape, bias_axes,
                                                              message):
    inp = keras.Input(SEQUENCE, name="x")
    x = L.EinsumDense(equation, output_shape, bias_axes=bias_axes, name="odd_einsum")(inp)
    with pytest.raises(ValueError, match=f"odd_einsum.*{equation}.*{message}"):
        tfqat.quantize_model(keras.Model(inp, head(x)))


@pytest.mark.parametrize("groups, padding, strides", [(2, "causal", 1), (2, "same", 2),
                                                       (4, "valid", 1)])
@pytest.mark.parametrize("rank", [1, 2])
def test_grouped_conv_gradients_match_keras(rank, groups, padding, strides):
    # Before quant_delay the weights are float: the QAT layer is Keras's grouped Conv1D or
    # Conv2D, in value and in gradient (TF's CPU grouped Conv2D has no gradient of its own).
    if rank == 2 and padding == "causal":
        pytest.skip("Conv2D has no causal padding")
    keras.utils.set_random_seed(0)
    conv = (L.Conv1D if rank == 1 else L.Conv2D)(8, 3, groups=groups, padding=padding,
                                                 strides=strides)
    x = tf.random.normal([2, *([7] * rank), 8])
    conv(x)
    qat = (tfqat.QuantConv1D if rank == 1 else tfqat.QuantConv2D).from_float(
        conv, quant_delay=10**6, name="q")
    qat(x)
    assert qat.kernel.shape == conv.kernel.shape
    qat.load_float_weights(conv)
    grads = []
    for layer in (conv, qat):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        grads.append(tape.gradient(loss, [x, layer.kernel, layer.bias]))
    for ours, theirs in zip(grads[1], grads[0]):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_channel", [True, False])
def test_grouped_conv2d_is_one_grouped_conv_2d_that_every_kernel_runs(per_channel):
    # The converter keeps Conv2D(groups=4) + BN + ReLU one CONV_2D with a [filters, 3, 3,
    # C / 4] int8 filter; LiteRT's builtin, reference and XNNPACK kernels run it within
    # 1 LSB of each other, and evaluate_int8 reproduces the reference kernels bit for bit
    # (and XNNPACK's arithmetic when asked).
    name = "conv2d_four_groups_bn_dilated"
    qat = tfqat.quantize_model(float_model(name), tfqat.QuantConfig(per_channel=per_channel))
    x = inputs(name, 32)
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    (grouped,) = [op for op in report.ops if op.name == "CONV_2D" and op.inputs[1].shape[-1] == 2]
    weights = grouped.inputs[1]
    assert tuple(weights.shape) == (4, 3, 3, 2) and weights.dtype == "int8"
    assert weights.scales.size == (4 if per_channel else 1)
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    runs = {k: run_tflite(flatbuffer, x, kernels=k).raw.astype(int)
            for k in ("builtin", "reference", "xnnpack")}
    for kernels in ("builtin", "xnnpack"):
        assert np.abs(runs[kernels] - runs["reference"]).max() <= 1, kernels
    np.testing.assert_array_equal(evaluate_int8(flatbuffer, x).outputs.raw, runs["reference"])
    np.testing.assert_array_equal(evaluate_int8(flatbuffer, x, kernels="xnnpack").outputs.raw,
                                  runs["xnnpack"])


def masked_attention_model(causal):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(SEQUENCE, name="x")
    mask = keras.Input((6, 6), name="mask")
    x = L.Dense(8, name="proj")(inp)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x, attention_mask=mask, use_causal_mask=causal)
    return keras.Model([inp, mask], head(x))


def attention_inputs(n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, *SEQUENCE)).astype("float32")
    mask = (rng.uniform(size=(n, 6, 6)) > 0.4).astype("float32")
    mask[:, :, 0] = 1.0  # every query attends to something
    return x, mask


@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_attention_mask_input_is_int8_and_matches_op_by_op(tmp_path, causal):
    qat = tfqat.quantize_model(masked_attention_model(causal))
    x, mask = attention_inputs(48)
    fit_briefly(qat, [x, mask], np.random.default_rng(2).integers(0, 5, len(x)))
    loaded = save_and_load(qat, tmp_path / "qat.keras", [x, mask])
    _, report = layer_checks.check_export(
        loaded, [x, mask], input_dtypes=("int8", "int8"),
        inner_names=("mha_mask_offset_fq", "mha_mask_penalty_fq"))
    assert report.op_histogram["SOFTMAX"] == 1, dict(report.op_histogram)


def test_masked_keys_have_no_weight_in_the_tflite():
    # Keys 3.. are masked for every query: changing the inputs there must not change the
    # int8 outputs of queries 0..2.
    keras.utils.set_random_seed(0)
    inp, mask_in = keras.Input(SEQUENCE, name="x"), keras.Input((6, 6), name="mask")
    x = L.Dense(8, name="proj")(inp)
    out = L.MultiHeadAttention(2, 4, name="mha")(x, x, attention_mask=mask_in)
    qat = tfqat.quantize_model(keras.Model([inp, mask_in], out))
    x, mask = attention_inputs(32)
    mask[:, :, 3:] = 0.0
    tfqat.calibrate(qat, [x, mask])
    flatbuffer = tfqat.export_tflite(qat)
    changed = x.copy()
    changed[:, 3:] = np.random.default_rng(5).normal(0, 3, changed[:, 3:].shape)
    from tfqat.diagnostics.evaluation import run_tflite
    first, second = (run_tflite(flatbuffer, {"x": v, "mask": mask}).raw for v in (x, changed))
    np.testing.assert_array_equal(first[:, :3], second[:, :3])
    assert np.abs(first[:, 3:].astype(int) - second[:, 3:]).max() > 0
