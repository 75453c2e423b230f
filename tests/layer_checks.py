"""The checks the layer test files share (test_more_layers, test_recurrent, test_transformer_layers).

A layer we accept must train a few steps, save and load as the same model, export
integer-only with int8 output (inputs int8, or int32/bool where the model takes ids
or masks), hold the ops of its decomposition, and match the QAT model op by op within
1 LSB with no tensor unmatched, the inner tensors of composite layers included.
"""

import keras
import numpy as np

import tfqat
from tfqat.diagnostics.fidelity import op_fidelity
from tfqat.nn.composite import CompositeQuantLayer

MAX_LSB = 1.0 + 1e-3  # op_fidelity's bound: within 1 LSB (float noise aside)


def first(x, n=8):
    """The first `n` examples of an input array, or of each array of a list of them."""
    return [a[:n] for a in x] if isinstance(x, (list, tuple)) else x[:n]


def inner_quantizers(qat):
    """The inner ActivationQuantizers of every composite layer of `qat`."""
    return [q for layer in qat.layers if isinstance(layer, CompositeQuantLayer)
            for q in layer.inner_quantizers]


def fit_briefly(qat, x, y, epochs=1, batch_size=16):
    """Compiles `qat` for class logits and fits it; the loss must stay finite."""
    qat.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    return history


def save_and_load(qat, path, x):
    """`qat` saved to `path` and loaded back with keras; the loaded model predicts the same."""
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    return loaded


def check_op_fidelity(qat, flatbuffer, x, require_inner=False, inner_names=()):
    """op_fidelity on the first 8 examples: nothing unmatched, every inner quantizer
    compared (at least one if `require_inner`; `inner_names` among them), within 1 LSB."""
    op_by_op = op_fidelity(qat, flatbuffer, first(x))
    assert op_by_op.unmatched == (), str(op_by_op)
    checked = {d.quantizer for d in op_by_op.diffs}
    inner = {q.name for q in inner_quantizers(qat)}
    assert inner or not require_inner, str(op_by_op)
    assert set(inner_names) <= inner, (set(inner_names) - inner, sorted(inner))
    assert inner <= checked, (inner - checked, str(op_by_op))
    assert op_by_op.max_diff_lsb <= MAX_LSB, str(op_by_op)
    return op_by_op


def check_export(qat, x, expected_ops=(), input_dtypes=("int8",), quantize_ops=0,
                 absent_ops=(), require_inner=False, inner_names=()):
    """Exports `qat` and checks the .tflite; returns (flatbuffer, report).

    `expected_ops`: {op: at least this many}; `quantize_ops`: the exact number of
    (requantizing) QUANTIZE ops, None to leave it unchecked; `absent_ops`: ops that
    must not appear. The rest as check_op_fidelity.
    """
    flatbuffer = tfqat.export_tflite(qat)  # raises NotIntegerOnlyError unless integer-only
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == [*input_dtypes, "int8"], \
        str(report)
    histogram = report.op_histogram
    for op, count in dict(expected_ops).items():
        assert histogram.get(op, 0) >= count, (op, dict(histogram))
    for op in absent_ops:
        assert op not in histogram, (op, dict(histogram))
    if quantize_ops is not None:
        assert histogram.get("QUANTIZE", 0) == quantize_ops, dict(histogram)
    check_op_fidelity(qat, flatbuffer, x, require_inner, inner_names)
    return flatbuffer, report


def check_matches_float_at_16_bits(model, x, atol):
    """At 16-bit weights and activations, the calibrated QAT model computes the float one."""
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
    tfqat.calibrate(qat, x)
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=atol)
    return qat
