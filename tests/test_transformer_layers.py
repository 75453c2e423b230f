"""Transformer and sequence layers through quantize_model -> calibrate/fit -> export_tflite.

Like tests/test_layer_set.py: tiny models with the real converter and LiteRT. The
.tflite must be integer-only, hold the TFLite ops of the layer's decomposition,
and match the QAT model op by op within 1 LSB, inner tensors of composite layers
(tfqat.nn.composite) included.
"""

import keras
import numpy as np
import pytest

import tfqat
import layer_checks
from layer_checks import (check_matches_float_at_16_bits, check_op_fidelity, fit_briefly,
                          inner_quantizers, save_and_load)
from tfqat.diagnostics.evaluation import compare_to_model

L = keras.layers


def randomize_affine(model, seed=0):
    """Non-trivial gamma/beta for every LayerNormalization, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.LayerNormalization):
            for weight, base in ((layer.gamma, 1.0), (layer.beta, 0.0)):
                if weight is not None:
                    weight.assign(base + rng.normal(0, 0.3, weight.shape).astype("float32"))
        if isinstance(layer, L.RMSNormalization):
            layer.scale.assign(1.0 + rng.normal(0, 0.3, layer.scale.shape).astype("float32"))
    return model


def head(x):
    return L.Dense(5, name="head")(L.Flatten()(x))


def layer_norm(**kwargs):
    def build(inp):
        x = L.Dense(8, name="proj")(inp)
        return head(L.LayerNormalization(name="ln", **kwargs)(x))
    return build


def rms_norm(inp):
    return head(L.RMSNormalization(name="ln")(L.Dense(8, name="proj")(inp)))


def attention(cross=False, **call_kwargs):
    def build(inp):
        x = L.Dense(8, name="proj")(inp)
        settings = dict(num_heads=2, key_dim=4)
        if cross:  # a shorter value sequence and its own key
            settings = dict(num_heads=3, key_dim=2, value_dim=3, output_shape=6, use_bias=False)
            value = L.MaxPooling1D(2, name="pool")(L.Dense(5, name="value_proj")(inp))
            key = L.Dense(7, name="key_proj")(value)
            x = L.MultiHeadAttention(**settings, name="mha")(x, value, key, **call_kwargs)
        else:
            x = L.MultiHeadAttention(**settings, name="mha")(x, x, **call_kwargs)
        return head(x)
    return build


SEQUENCE, IMAGE = (6, 4), (4, 5, 3)
MHA_OPS = {"FULLY_CONNECTED": 4, "TRANSPOSE": 4, "BATCH_MATMUL": 2, "SOFTMAX": 1}
LN_OPS = {"MEAN": 2, "SUB": 1, "MUL": 3, "ADD": 2, "RSQRT": 1}
# name: (builder, input shape, TFLite ops that must appear)
CASES = {
    "layer_norm": (layer_norm(), SEQUENCE, LN_OPS),
    "layer_norm_no_center": (layer_norm(center=False), SEQUENCE,
                             {"MEAN": 2, "SUB": 1, "MUL": 3, "ADD": 1, "RSQRT": 1}),
    "layer_norm_no_scale": (layer_norm(scale=False), SEQUENCE,
                            {"MEAN": 2, "SUB": 1, "MUL": 2, "ADD": 2, "RSQRT": 1}),
    "layer_norm_plain": (layer_norm(center=False, scale=False, epsilon=0.1), SEQUENCE,
                         {"MEAN": 2, "SUB": 1, "MUL": 2, "ADD": 1, "RSQRT": 1}),
    "layer_norm_rms_scaling": (layer_norm(rms_scaling=True), SEQUENCE,
                               {"MEAN": 2, "SUB": 1, "MUL": 3, "ADD": 1, "RSQRT": 1}),
    "rms_normalization": (rms_norm, SEQUENCE, {"MEAN": 1, "MUL": 3, "ADD": 1, "RSQRT": 1}),
    "layer_norm_axes": (layer_norm(axis=[1, 2]), IMAGE, LN_OPS),
    "layer_norm_middle_axis": (layer_norm(axis=-2), IMAGE, LN_OPS),
    "attention": (attention(), SEQUENCE, MHA_OPS),
    "attention_causal": (attention(use_causal_mask=True), SEQUENCE, {**MHA_OPS, "ADD": 1}),
    "attention_cross": (attention(cross=True), SEQUENCE, MHA_OPS),
    "attention_cross_causal": (attention(cross=True, use_causal_mask=True), SEQUENCE,
                               {**MHA_OPS, "ADD": 1}),
}


def float_model(name):
    build, shape, _ = CASES[name]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="x")
    return randomize_affine(keras.Model(inp, build(inp)))


def inputs(name, n=32, seed=1):
    shape = CASES[name][1]
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype("float32")


def check_export(qat, x, expected_ops, input_dtype="int8"):
    flatbuffer, _ = layer_checks.check_export(qat, x, expected_ops, input_dtypes=(input_dtype,),
                                              require_inner=True)
    return flatbuffer


# The fast suite runs these; the other variants run in the slow suite (each ~20 s).
FAST_CASES = ("layer_norm", "layer_norm_axes", "rms_normalization", "attention_causal",
              "attention_cross")


def fast_or_slow(names):
    return [name if name in FAST_CASES else pytest.param(name, marks=pytest.mark.slow)
            for name in names]


@pytest.mark.parametrize("name", fast_or_slow(sorted(CASES)))
def test_layer_exports_integer_only_and_matches_op_by_op(name):
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name)
    ranges = tfqat.calibrate(qat, x)
    assert all(q.name in ranges and q.is_calibrated
               for q in inner_quantizers(qat) if q.fixed_range is None)
    flatbuffer = check_export(qat, x, CASES[name][2])
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.agreement >= 0.9, comparison


@pytest.mark.parametrize("name", ["layer_norm", "attention_cross_causal", *(
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("layer_norm_rms_scaling", "rms_normalization", "layer_norm_axes",
                 "attention_causal"))])
def test_qat_layer_matches_the_float_layer_at_16_bits(name):
    check_matches_float_at_16_bits(float_model(name), inputs(name, 16), atol=2e-2)


def test_export_refuses_uncalibrated_inner_quantizers():
    qat = tfqat.quantize_model(float_model("layer_norm"))
    with pytest.raises(tfqat.ExportError, match="ln_mean_fq"):
        tfqat.export_tflite(qat)


@pytest.mark.parametrize("name, layer", [("layer_norm", "ln"), ("attention_causal", "mha")])
def test_fit_tracks_inner_ranges_then_saves_loads_and_exports(tmp_path, name, layer):
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name, 64)
    fit_briefly(qat, x, np.random.default_rng(2).integers(0, 5, 64), epochs=2)
    composite = qat.get_layer(layer)
    assert all(int(q.step.numpy()) == 8 and q.current_range()[1] > 0
               for q in composite.inner_quantizers)
    loaded = save_and_load(qat, tmp_path / "qat.keras", x)
    loaded_inner = loaded.get_layer(layer).inner_quantizers
    assert len(loaded_inner) == len(composite.inner_quantizers)
    for q, q_loaded in zip(composite.inner_quantizers, loaded_inner):
        assert q.name == q_loaded.name and q.current_range() == q_loaded.current_range()
    check_export(loaded, x, CASES[name][2])


def test_constant_rows_saturate_rsqrt_like_the_tflite():
    # A row with no variance: var + eps rounds to 0, and TFLite's int8 RSQRT returns its
    # largest value, as the fake quant clamps rsqrt(0) = inf. Training stays finite.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8), name="x")
    out = head(L.LayerNormalization(epsilon=1e-6, name="ln")(inp))
    qat = tfqat.quantize_model(keras.Model(inp, out))
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 8)).astype("float32")
    x[:, 0, :] = 0.5
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, np.zeros(32), batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(qat.get_layer("ln")._rsqrt_fq.current_range()).all()
    assert all(np.isfinite(w).all() for w in qat.get_weights())
    check_export(qat, x, LN_OPS)


def test_causal_mask_gives_masked_positions_no_weight_in_the_tflite():
    # Changing the later positions must not change the earlier positions' int8 outputs.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4), name="x")
    x = L.Dense(8, name="proj")(inp)
    out = L.MultiHeadAttention(2, 4, name="mha")(x, x, use_causal_mask=True)
    qat = tfqat.quantize_model(keras.Model(inp, out))
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 4)).astype("float32")
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    changed = x.copy()
    changed[:, 3:] = np.random.default_rng(5).normal(0, 3, changed[:, 3:].shape)
    outputs = [run_tflite(flatbuffer, v) for v in (x, changed)]
    np.testing.assert_array_equal(outputs[0][:, :3], outputs[1][:, :3])
    assert np.abs(outputs[0][:, 3:].astype(int) - outputs[1][:, 3:]).max() > 0


def run_tflite(flatbuffer, x):
    from tfqat.diagnostics.evaluation import quantize_input
    from tfqat.export.reader import load_interpreter

    interpreter = load_interpreter(flatbuffer)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], quantize_input(x, detail))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(use_gate=True), "use_gate"),
    (dict(attention_axes=(1, 2)), "attention_axes"),
])
def test_unsupported_attention_settings_are_refused_with_the_layer_name(kwargs, message):
    inp = keras.Input((4, 5, 8), name="x")
    out = L.MultiHeadAttention(2, 4, name="odd_mha", **kwargs)(inp, inp)
    with pytest.raises(ValueError, match=f"odd_mha.*{message}"):
        tfqat.quantize_model(keras.Model(inp, head(out)))


def typed_mask_model(dtype, cross=False, causal=False):
    """Attention with a bool or int32 mask input (True / non-zero = attend)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(SEQUENCE, name="x")
    mask = keras.Input((6, 3 if cross else 6), name="mask", dtype=dtype)
    x = L.Dense(8, name="proj")(inp)
    value = L.MaxPooling1D(2, name="pool")(L.Dense(5, name="value_proj")(inp)) if cross else x
    x = L.MultiHeadAttention(2, 4, name="mha")(x, value, attention_mask=mask,
                                               use_causal_mask=causal)
    return keras.Model([inp, mask], head(x))


def typed_mask_inputs(dtype, n, keys=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, *SEQUENCE)).astype("float32")
    attend = rng.uniform(size=(n, 6, keys)) > 0.4
    attend[:, :, 0] = True  # every query attends to something
    if dtype == "bool":
        return x, attend
    return x, (attend * rng.integers(1, 4, attend.shape)).astype(dtype)  # any non-zero attends


@pytest.mark.parametrize("dtype, cross, causal", [
    ("bool", False, False), ("int32", True, True),
    pytest.param("bool", True, True, marks=pytest.mark.slow),
    pytest.param("int32", False, False, marks=pytest.mark.slow)])
def test_bool_and_int32_masks_stay_as_inputs_and_match_op_by_op(tmp_path, dtype, cross, causal):
    from tfqat.diagnostics.evaluation import run_tflite as run

    qat = tfqat.quantize_model(typed_mask_model(dtype, cross, causal))
    x, mask = typed_mask_inputs(dtype, 48, 3 if cross else 6)
    fit_briefly(qat, [x, mask], np.random.default_rng(2).integers(0, 5, len(x)))
    loaded = save_and_load(qat, tmp_path / "qat.keras", [x, mask])
    # The mask stays a bool / int32 input: no CAST, no float op (check_export).
    flatbuffer, report = layer_checks.check_export(
        loaded, [x, mask], input_dtypes=("int8", dtype), absent_ops=("CAST",),
        inner_names=("mha_mask_penalty_fq", "mha_masked_fq"))
    ops = report.op_histogram
    assert ops["SELECT_V2"] == 1 and ops["SOFTMAX"] == 1, ops
    assert ops.get("NOT_EQUAL", 0) == (dtype == "int32"), ops
    # The reference and XNNPACK (LiteRT's default) kernels run it, and evaluate_int8 gives
    # each one's outputs bit for bit. (XNNPACK differs from the builtin kernels by up to
    # 2 LSB on 15% of these outputs, as with a float mask: its float32 requantization.)
    for kernels in ("reference", "xnnpack"):
        lite = run(flatbuffer, {"x": x, "mask": mask}, kernels=kernels).raw
        ours = tfqat.evaluate_int8(flatbuffer, [x, mask], kernels=kernels).outputs.raw
        np.testing.assert_array_equal(ours, lite, err_msg=kernels)
    comparison = compare_to_model(loaded, flatbuffer, [x, mask])
    assert comparison.agreement >= 0.9, comparison


@pytest.mark.parametrize("dtype, cross, causal", [("bool", False, True), ("int32", True, False)])
def test_typed_mask_qat_layer_matches_keras_at_16_bits(dtype, cross, causal):
    # Keras casts the mask to bool: an int32 mask of 1s, 2s and 3s attends wherever non-zero.
    model = typed_mask_model(dtype, cross, causal)
    check_matches_float_at_16_bits(model, list(typed_mask_inputs(dtype, 16, 3 if cross else 6)),
                                   atol=2e-2)


def test_bool_mask_gives_masked_keys_no_weight_in_the_tflite():
    # Keys 3.. are masked for every query (and the causal mask hides later keys too):
    # changing the inputs there must not change any int8 output.
    from tfqat.diagnostics.evaluation import run_tflite as run

    keras.utils.set_random_seed(0)
    inp, mask_in = keras.Input(SEQUENCE, name="x"), keras.Input((6, 6), dtype="bool", name="mask")
    x = L.Dense(8, name="proj")(inp)
    out = L.MultiHeadAttention(2, 4, name="mha")(x, x, attention_mask=mask_in,
                                                 use_causal_mask=True)
    qat = tfqat.quantize_model(keras.Model([inp, mask_in], out))
    x, mask = typed_mask_inputs("bool", 32)
    mask[:, :, 3:] = False
    tfqat.calibrate(qat, [x, mask])
    flatbuffer = tfqat.export_tflite(qat)
    changed = x.copy()
    changed[:, 3:] = np.random.default_rng(5).normal(0, 3, changed[:, 3:].shape)
    first, second = (run(flatbuffer, {"x": v, "mask": mask}).raw for v in (x, changed))
    np.testing.assert_array_equal(first[:, :3], second[:, :3])
    assert np.abs(first[:, 3:].astype(int) - second[:, 3:]).max() > 0  # they still attend


def test_other_integer_attention_masks_are_refused_with_the_layer_name():
    inp = keras.Input((6, 8), name="x")
    mask = keras.Input((6, 6), name="mask", dtype="int64")
    out = L.MultiHeadAttention(2, 4, name="masked_mha")(inp, inp, attention_mask=mask)
    with pytest.raises(ValueError, match="masked_mha.*attention_mask of dtype int64.*int32"):
        tfqat.quantize_model(keras.Model([inp, mask], head(out)))


def encoder_block(x, name, causal=False):
    """Pre-LN transformer block: LN -> MHA -> residual, LN -> Dense(gelu) -> Dense -> residual."""
    y = L.LayerNormalization(name=f"{name}_ln1")(x)
    y = L.MultiHeadAttention(2, 4, name=f"{name}_mha")(y, y, use_causal_mask=causal)
    x = L.Add(name=f"{name}_res1")([x, y])
    y = L.LayerNormalization(name=f"{name}_ln2")(x)
    y = L.Dense(16, activation="gelu", name=f"{name}_mlp1")(y)
    y = L.Dense(x.shape[-1], name=f"{name}_mlp2")(y)
    return L.Add(name=f"{name}_res2")([x, y])


def text_block_model(causal):
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    x = L.Embedding(20, 8, name="tokens")(ids)
    x = encoder_block(x, "block", causal)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="pool")(x))
    return randomize_affine(keras.Model(ids, out))


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_embedding_and_encoder_block_export_integer_only_with_int32_token_ids(causal):
    model = text_block_model(causal)
    ids = np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32")
    qat = tfqat.quantize_model(model)
    assert isinstance(qat.get_layer("tokens"), tfqat.QuantEmbedding)
    tfqat.calibrate(qat, ids)
    ops = {"GATHER": 1, "GELU": 1, "RSQRT": 2, "SOFTMAX": 1, "BATCH_MATMUL": 2, "ADD": 2}
    flatbuffer = check_export(qat, ids, ops, input_dtype="int32")
    report = tfqat.inspect_tflite(flatbuffer)
    (gather,) = [op for op in report.ops if op.name == "GATHER"]
    table = gather.inputs[0]
    assert table.dtype == "int8" and table.scales.size == 1 and int(table.zero_points[0]) == 0
    comparison = compare_to_model(qat, flatbuffer, ids)
    assert comparison.agreement >= 0.9, comparison


def test_embedding_table_is_exported_as_the_qat_models_int8_table():
    qat = tfqat.quantize_model(text_block_model(False))
    ids = np.arange(20, dtype="int32").reshape(-1, 1).repeat(6, axis=1)[:, :6]
    tfqat.calibrate(qat, ids)
    layer = qat.get_layer("tokens")
    table = layer.quantized_table().numpy()
    bound = np.abs(layer.embeddings.numpy()).max()
    np.testing.assert_allclose(table * 127 / bound, np.round(table * 127 / bound), atol=1e-4)
    np.testing.assert_array_equal(layer(ids).numpy()[:, 0], table[ids[:, 0]])


def test_embedding_mask_zero_is_refused_with_the_layer_name():
    ids = keras.Input((6,), dtype="int32", name="ids")
    x = L.Embedding(20, 8, mask_zero=True, name="padded_tokens")(ids)
    model = keras.Model(ids, L.Dense(3)(L.GlobalAveragePooling1D()(x)))
    with pytest.raises(ValueError, match="padded_tokens.*mask_zero"):
        tfqat.quantize_model(model)


INFERENCE_ONLY = [
    lambda: L.RandomFlip(seed=1), lambda: L.RandomRotation(0.1, seed=1),
    lambda: L.RandomZoom(0.1, seed=1), lambda: L.RandomTranslation(0.1, 0.1, seed=1),
    lambda: L.RandomContrast(0.2, seed=1), lambda: L.GaussianNoise(0.5, seed=1),
    lambda: L.GaussianDropout(0.3, seed=1), lambda: L.AlphaDropout(0.3, seed=1),
    lambda: L.SpatialDropout2D(0.3, seed=1), lambda: L.ActivityRegularization(l1=0.01),
]


def test_training_only_layers_act_in_fit_and_are_dropped_from_the_export():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="x")
    x = inp
    for make in INFERENCE_ONLY:
        x = make()(x)
    x = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = L.SpatialDropout2D(0.2, name="drop")(x)
    model = keras.Model(inp, head(x))
    qat = tfqat.quantize_model(model)
    kept = {type(layer) for layer in qat.layers}
    assert {type(make()) for make in INFERENCE_ONLY} <= kept
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 6, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    # They act in training: two training-mode calls differ, inference calls do not.
    first, second = (qat(x[:4], training=True).numpy() for _ in range(2))
    assert np.abs(first - second).max() > 0
    np.testing.assert_array_equal(qat(x[:4], training=False).numpy(), qat.predict(x[:4], verbose=0))
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert set(report.op_histogram) <= {"CONV_2D", "RESHAPE", "FULLY_CONNECTED"}, \
        dict(report.op_histogram)
    check_op_fidelity(qat, flatbuffer, x)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_over_another_axis_is_int8_transpose_softmax_transpose(axis):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="x")
    y = L.Softmax(axis=axis, name="softmax")(L.Conv2D(4, 1, name="conv")(inp))
    qat = tfqat.quantize_model(keras.Model(inp, head(y)))
    assert qat.get_layer("softmax_fq").fixed_range == tfqat.nn.quantizers.FIXED_RANGES["softmax"]
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 6, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only and report.op_histogram["SOFTMAX"] == 1, str(report)
    assert report.op_histogram["TRANSPOSE"] == 2, dict(report.op_histogram)
    check_op_fidelity(qat, flatbuffer, x)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_grouped_conv_with_a_group_per_channel_is_an_int8_depthwise_conv(multiplier):
    # ConvNeXt: Conv2D(C, 7, groups=C) -> LayerNormalization.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="x")
    x = L.Conv2D(3 * multiplier, 3, padding="same", groups=3, name="grouped")(inp)
    model = randomize_affine(keras.Model(inp, head(L.LayerNormalization(name="ln")(x))))
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 6, 3)).astype("float32")
    qat = tfqat.quantize_model(model)
    assert isinstance(qat.get_layer("grouped"), tfqat.QuantDepthwiseConv2D)
    check_matches_float_at_16_bits(model, x, atol=2e-2)
    tfqat.calibrate(qat, x)
    check_export(qat, x, {"DEPTHWISE_CONV_2D": 1, **LN_OPS})


def test_convnext_block_with_layer_scale_exports_integer_only():
    # ConvNeXt's block: depthwise Conv2D(groups=C) -> LayerNormalization -> Dense(4C, gelu) ->
    # Dense(C) -> LayerScale -> residual Add.
    from keras.src.applications.convnext import LayerScale

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4), name="x")
    x = L.Conv2D(4, 3, padding="same", groups=4, name="dw")(inp)
    x = L.LayerNormalization(epsilon=1e-6, name="ln")(x)
    x = L.Dense(16, activation="gelu", name="pw1")(x)
    x = L.Dense(4, name="pw2")(x)
    x = LayerScale(0.5, 4, name="layer_scale")(x)
    x = L.Add(name="res")([inp, x])
    model = randomize_affine(keras.Model(inp, head(x)))
    model.get_layer("layer_scale").gamma.assign(np.linspace(0.2, 0.8, 4).astype("float32"))
    qat = tfqat.quantize_model(model)
    assert isinstance(qat.get_layer("layer_scale"), tfqat.QuantRescaling)
    assert qat.get_layer("layer_scale").trainable
    x = np.random.default_rng(1).normal(0, 1, (32, 6, 6, 4)).astype("float32")
    check_matches_float_at_16_bits(model, x, atol=2e-2)
    tfqat.calibrate(qat, x)
    check_export(qat, x, {"DEPTHWISE_CONV_2D": 2, "GELU": 1, **LN_OPS})
