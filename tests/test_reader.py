import numpy as np
import tensorflow as tf

import tfqat
from tfqat.export.reader import OpInfo, TensorInfo
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
