import pathlib

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.export.reader import (OpInfo, TensorInfo, add_metadata, dequantize, load_interpreter,
                                 quantize, read_metadata, read_tflite, stored_tensors)
from tiny_models import mixed_model


def tensor(dtype):
    return TensorInfo(0, "t", dtype, (1,), np.array([0.1]), np.array([0]), 0)


def test_requantize_is_integer_but_float_conversions_are_not():
    assert OpInfo(0, "QUANTIZE", [tensor("int8")], [tensor("int8")]).is_integer
    assert not OpInfo(0, "QUANTIZE", [tensor("float32")], [tensor("int8")]).is_integer
    assert not OpInfo(0, "DEQUANTIZE", [tensor("int8")], [tensor("float32")]).is_integer
    assert OpInfo(0, "CONV_2D", [tensor("int8"), tensor("int8"), tensor("int32")],
                  [tensor("int8")]).is_integer
    assert not OpInfo(0, "CONV_2D", [tensor("float32")], [tensor("float32")]).is_integer


def test_float_model_report(tmp_path):
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(mixed_model()).convert()
    path = tmp_path / "float.tflite"
    path.write_bytes(flatbuffer)
    report = tfqat.inspect_tflite(str(path))
    assert report.size_bytes == len(flatbuffer)
    assert not report.integer_only and len(report.float_ops) == len(report.ops)
    assert report.inputs[0].dtype == "float32" and report.inputs[0].shape == (1, 12, 12, 1)
    assert "integer-only: NO" in str(report) and "not integer: op 0" in str(report)


# Ways to read a .tflite around the reader: a flatbuffer schema module, the interpreter's
# private op listing, TF's flatbuffer tools, a LiteRT interpreter built directly, or an
# interpreter's tensor quantization read by hand.
_READER_ONLY = ("schema_py_generated", "_get_ops_details", "flatbuffer_utils",
                "ai_edge_litert", "lite.Interpreter", "quantization_parameters",
                '["quantization"]')


def test_only_the_reader_reads_tflite_files():
    root = pathlib.Path(__file__).resolve().parent.parent
    reader = root / "tfqat" / "export" / "reader.py"
    assert any(word in reader.read_text() for word in _READER_ONLY)  # the words are still right
    sources = sorted((root / "tfqat").rglob("*.py")) + sorted((root / "bench").rglob("*.py"))
    offenders = [f"{path.relative_to(root)}: {word}" for path in sources if path != reader
                 for word in _READER_ONLY if word in path.read_text()]
    assert not offenders, ("read .tflite files through tfqat/export/reader.py: "
                           + "; ".join(offenders))


def test_metadata_written_is_read_back_and_the_model_still_runs():
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(mixed_model()).convert()
    marked = add_metadata(flatbuffer, "tfqat_test", b"\x00value")
    assert read_metadata(marked)["tfqat_test"] == b"\x00value"
    assert read_metadata(flatbuffer).keys() < read_metadata(marked).keys()
    before, after = read_tflite(flatbuffer), read_tflite(marked)
    assert [op.name for op in before.ops] == [op.name for op in after.ops]
    x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
    outputs = []
    for model in (before, after):
        interpreter = model.interpreter()
        interpreter.allocate_tensors()
        interpreter.set_tensor(model.inputs[0].index, x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(model.outputs[0].index))
    np.testing.assert_array_equal(*outputs)


def test_model_view_matches_the_interpreter_and_kernel_sets_agree():
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(mixed_model()).convert()
    model = read_tflite(flatbuffer)
    details = load_interpreter(flatbuffer).get_tensor_details()
    assert sorted(model.tensors) == sorted(int(d["index"]) for d in details)
    for op in model.ops:
        for index in op.output_indices:
            assert model.producers[index] is op
    stored = [t for t in stored_tensors(flatbuffer) if t.subgraph == 0]
    assert [t.index for t in stored] == sorted(model.tensors)
    assert all(t.rank == len(model.tensors[t.index].shape) for t in stored)
    x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
    results = []
    for kernels in ("builtin", "xnnpack", "reference"):
        interpreter = model.interpreter(kernels=kernels)
        interpreter.allocate_tensors()
        interpreter.set_tensor(model.inputs[0].index, x)
        interpreter.invoke()
        results.append(interpreter.get_tensor(model.outputs[0].index))
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-5)
    with pytest.raises(ValueError, match="kernels"):
        load_interpreter(flatbuffer, kernels="gpu")


def test_quantize_and_dequantize_round_trip_per_tensor():
    t = TensorInfo(0, "t", "int8", (3,), np.array([0.5], np.float32), np.array([-1]), 0)
    assert t.is_quantized and not t.per_axis and (t.scale, t.zero_point) == (0.5, -1)
    q = quantize(np.array([-100.0, 0.25, 1.0, 100.0]), t)
    np.testing.assert_array_equal(q, np.array([-128, 0, 1, 127], np.int8))  # half up, clipped
    np.testing.assert_array_equal(dequantize(q, t), [-63.5, 0.5, 1.0, 64.0])
    per_axis = TensorInfo(0, "w", "int8", (2, 1), np.array([0.1, 0.2]), np.array([0, 0]), 0)
    assert per_axis.per_axis and per_axis.scale == 0.0 and not per_axis.is_quantized


def test_int4_weights_are_read_unpacked():
    # Found by the fuzzer: 4-bit weights are stored packed two to a byte, and reading their
    # buffer as int8 failed ("cannot reshape array of size 27 into shape (2,3,3,3)").
    import keras

    from tfqat.diagnostics.evaluation import run_tflite
    from tfqat.export.reader import read_tflite

    inputs = keras.Input((6, 6, 3))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs)))
    qat = tfqat.quantize_model(keras.Model(inputs, outputs), tfqat.QuantConfig(weight_bits=4))
    x = np.random.default_rng(0).random((8, 6, 6, 3), np.float32)
    tfqat.calibrate(qat, x)
    flatbuffer = tfqat.export_tflite(qat)
    model = read_tflite(flatbuffer)
    conv = next(op for op in model.ops if op.name == "CONV_2D")
    kernel = model.constants[conv.input_indices[1]]
    assert kernel.shape == (2, 3, 3, 3) and kernel.dtype == np.int8
    assert -7 <= kernel.min() < 0 < kernel.max() <= 7  # the 4-bit narrow grid
    # The unpacked values are the ones the kernels use: evaluate_int8 computes with them.
    np.testing.assert_array_equal(tfqat.evaluate_int8(flatbuffer, x).outputs.raw,
                                  run_tflite(flatbuffer, x, kernels="reference").raw)
