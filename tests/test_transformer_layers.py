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
from tfqat.diagnostics.evaluation import compare_to_model
from tfqat.diagnostics.fidelity import op_fidelity
from tfqat.nn.composite import CompositeQuantLayer

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


SEQUENCE, IMAGE = (6, 4), (4, 5, 3)
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


def composite_layers(qat):
    return [layer for layer in qat.layers if isinstance(layer, CompositeQuantLayer)]


def check_export(qat, x, expected_ops):
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    for op, count in expected_ops.items():
        assert report.op_histogram[op] >= count, (op, dict(report.op_histogram))
    assert report.op_histogram.get("QUANTIZE", 0) == 0, dict(report.op_histogram)
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert op_by_op.unmatched == (), str(op_by_op)
    checked = {d.quantizer for d in op_by_op.diffs}
    inner = {q.name for layer in composite_layers(qat) for q in layer.inner_quantizers}
    assert inner and inner <= checked, (inner - checked, str(op_by_op))
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    return flatbuffer


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_exports_integer_only_and_matches_op_by_op(name):
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name)
    ranges = tfqat.calibrate(qat, x)
    inner = [q for layer in composite_layers(qat) for q in layer.inner_quantizers]
    assert all(q.name in ranges and q.is_calibrated for q in inner if q.fixed_range is None)
    flatbuffer = check_export(qat, x, CASES[name][2])
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.agreement >= 0.9, comparison


@pytest.mark.parametrize("name", ["layer_norm", "layer_norm_rms_scaling", "rms_normalization",
                                  "layer_norm_axes"])
def test_qat_layer_matches_the_float_layer_at_16_bits(name):
    model = float_model(name)
    x = inputs(name, 16)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
    tfqat.calibrate(qat, x)
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=2e-2)


def test_export_refuses_uncalibrated_inner_quantizers():
    qat = tfqat.quantize_model(float_model("layer_norm"))
    with pytest.raises(tfqat.ExportError, match="ln_mean_fq"):
        tfqat.export_tflite(qat)


def test_fit_tracks_inner_ranges_then_saves_loads_and_exports(tmp_path):
    name = "layer_norm"
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name, 64)
    y = np.random.default_rng(2).integers(0, 5, 64)
    qat.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    ln = qat.get_layer("ln")
    assert all(int(q.step.numpy()) == 8 and q.current_range()[1] > 0
               for q in ln.inner_quantizers)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    for q, q_loaded in zip(ln.inner_quantizers, loaded.get_layer("ln").inner_quantizers):
        assert q.name == q_loaded.name and q.current_range() == q_loaded.current_range()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    check_export(loaded, x, LN_OPS)


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
