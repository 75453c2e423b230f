"""bench/fidelity_sources.py's per-op requantizations against the real LiteRT kernels: its
fixed-point form is the reference kernels' output value for value, and the QAT graph's bias
(the int32 grid) with one rounding is XNNPACK's arithmetic."""

import importlib.util
import pathlib
import sys

import keras
import numpy as np

import tfqat

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_fidelity_sources",
                                                  BENCH / "fidelity_sources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _model():
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(2)
    for variable in model.weights:
        if variable.path.split("/")[-1] in ("bias", "beta"):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    return model


def test_requantizations_match_the_kernels_they_stand_for():
    sources = _load()
    qat = tfqat.quantize_model(_model())
    x = np.random.default_rng(0).uniform(-1, 1, (64, 10, 10, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    tflite = tfqat.export_tflite(qat)
    rows = sources.op_sources(qat, sources.reference_run(tflite, x))
    assert sorted(r["op"] for r in rows) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D"]
    for row in rows:
        assert set(row["differ"]) == set(sources.WAYS), row  # every layer's float bias found
        assert row["differ"]["int32 bias, TFLite fixed point"] == 0.0, row
        assert row["differ_xnnpack"]["int32 bias, one rounding"] <= 1e-3, row
    graph = sources.qat_graph_rate(qat, tflite, x)  # op_fidelity on the reference kernels
    assert graph["quantizers"] >= 3 and graph["max_lsb"] <= 1.0 + 1e-3, graph


def test_mean_requantizations_match_the_kernels_they_stand_for():
    # LayerNormalization's two MEANs and a global pool: the fixed-point form is the reference
    # kernels' MEAN value for value, and without a right shift it is one exact rounding.
    sources = _load()
    inputs = keras.Input((12, 16))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    qat = tfqat.quantize_model(keras.Model(inputs, keras.layers.Dense(4)(x)))
    x = np.random.default_rng(0).normal(0, 1, (64, 12, 16)).astype("float32")
    tfqat.calibrate(qat, x)
    rows = sources.mean_sources(sources.reference_run(tfqat.export_tflite(qat), x))
    assert len(rows) == 3, rows
    for row in rows:
        assert row["differ"]["TFLite fixed point"] == 0.0, row
        exact = row["differ"]["one exact rounding"]
        if row["shift"] >= 0:
            assert exact == 0.0, row
        else:  # the intermediate is on a 2^shift LSB grid: about 2^(shift - 1) of the values move
            assert 0.5 * 2.0 ** (row["shift"] - 1) < exact < 1.5 * 2.0 ** (row["shift"] - 1), row
        assert row["differ_xnnpack"]["one exact rounding"] <= 1e-3, row  # XNNPACK rounds once
    assert any(row["shift"] < 0 for row in rows)  # these scales give LayerNorm's right shift
    section = "\n".join(sources._mean_table(rows))
    assert section.count("| MEAN, ") == len({min(r["shift"], 0) for r in rows})
