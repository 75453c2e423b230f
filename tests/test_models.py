"""The model zoo: each model builds, has the expected layers and quantizes."""

import collections

import keras
import numpy as np
import pytest

import tfqat
from tfqat.training import models


def layer_counts(model):
    return collections.Counter(type(layer).__name__ for layer in model.layers)


def test_lenet5_layers():
    model = models.lenet5()
    counts = layer_counts(model)
    assert counts["Conv2D"] == 2 and counts["Dense"] == 2
    assert counts["BatchNormalization"] == 3 and counts["ReLU"] == 3
    assert counts["MaxPooling2D"] == 2
    assert model.output_shape == (None, 10)
    assert model.get_layer("logits").activation is keras.activations.softmax
    assert not model.get_layer("conv1").use_bias  # BN follows, so a bias is redundant


def test_small_resnet_layers():
    model = models.small_resnet()
    counts = layer_counts(model)
    assert counts["BatchNormalization"] == 6
    assert counts["DepthwiseConv2D"] == 1 and counts["Add"] == 1
    assert counts["Concatenate"] == 1 and counts["GlobalAveragePooling2D"] == 1
    assert model.get_layer("dw_relu6").max_value == 6.0
    assert model.count_params() < 10_000
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - set(models.WIDTH_SCALED)))
def test_models_take_other_input_shapes(name):
    model = models.build_model(name, (8, 8, 1), num_classes=4)
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 4)


@pytest.mark.parametrize("name,fused", [
    ("lenet5", {"QuantConv2D": 2, "QuantDense": 2}),
    ("small_resnet", {"QuantConv2D": 5, "QuantDepthwiseConv2D": 1, "QuantDense": 1}),
])
def test_models_quantize(name, fused):
    model = models.build_model(name)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=10))
    counts = layer_counts(qat)
    for kind, count in fused.items():
        assert counts[kind] == count, (kind, counts)
    assert counts["BatchNormalization"] == 0 and counts["QuantBatchNormalization"] == 0
    folded = [layer for layer in qat.layers
              if isinstance(layer, tfqat.FusedQuantLayer) and layer.batchnorm is not None]
    assert len(folded) == layer_counts(model)["BatchNormalization"]
    assert counts["ActivationQuantizer"] > 0
    assert qat.output_shape == model.output_shape


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match=r"'resnet50'.*lenet5, mobilenet_v1.*\.keras"):
        models.build_model("resnet50")


@pytest.mark.parametrize("data_shape,input_size,expected", [
    ((28, 28, 1), None, (32, 32, 3)), ((28, 28, 1), 96, (96, 96, 3)), ((40, 40, 3), None, (40, 40, 3))])
def test_mobilenets_need_32x32_rgb_at_least(data_shape, input_size, expected):
    assert models.required_input_shape("mobilenet_v2", input_size, data_shape) == expected
    assert models.required_input_shape("lenet5", None, data_shape) == data_shape


@pytest.mark.parametrize("name,alpha", [("convnet_bn", 1.0), ("resnet8", 1.0),
                                        ("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35)])
def test_zoo_models_quantize_and_export_integer_only(name, alpha):
    model = models.build_model(name, (32, 32, 3), num_classes=10, alpha=alpha)
    qat = tfqat.quantize_model(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in qat.layers)
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    tfqat.calibrate(qat, x, method="minmax")
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat))
    assert report.integer_only, str(report)


def _fit_briefly(qat, x, num_classes):
    # A few real training steps: gamma and beta of the LayerNormalizations leave exactly 1 and
    # 0 (which the converter would drop as identity MUL/ADD, see tfqat/nn/normalization.py).
    y = np.random.default_rng(2).integers(0, num_classes, len(x))
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    history = qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


TRANSFORMER_SIZES = {  # tiny (fast suite), and the default sizes (slow)
    "vit_tiny": dict(dim=16, depth=1),
    "text_transformer": dict(dim=16, depth=1),
}


@pytest.mark.parametrize("name, full", [
    ("vit_tiny", False), ("text_transformer", False),
    pytest.param("vit_tiny", True, marks=pytest.mark.slow),
    pytest.param("text_transformer", True, marks=pytest.mark.slow),
])
def test_transformer_models_export_integer_only_and_match_op_by_op(name, full):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    sizes = {} if full else TRANSFORMER_SIZES[name]
    if name == "vit_tiny":
        shape = (32, 32, 3) if full else (8, 8, 1)
        model = models.vit_tiny(shape, num_classes=4, **sizes)
        x = rng.uniform(0, 1, (32, *shape)).astype("float32")
        input_dtype = "int8"
    else:
        length = 32 if full else 8
        model = models.text_transformer(length, vocab_size=50, num_classes=4, **sizes)
        x = rng.integers(0, 50, (32, length)).astype("int32")
        input_dtype = "int32"
    counts = layer_counts(model)
    assert counts["MultiHeadAttention"] >= 1 and counts["LayerNormalization"] >= 3
    if not full:  # trained-like gamma/beta without the cost of fit (the slow case trains)
        rng_affine = np.random.default_rng(4)
        for layer in model.layers:
            if isinstance(layer, keras.layers.LayerNormalization):
                layer.gamma.assign(rng_affine.uniform(0.7, 1.3, layer.gamma.shape))
                layer.beta.assign(rng_affine.normal(0, 0.1, layer.beta.shape))
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, x)
    if full:
        _fit_briefly(qat, x, 4)
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == [input_dtype, "int8"]
    for op in ("BATCH_MATMUL", "SOFTMAX", "RSQRT", "GELU", "FULLY_CONNECTED"):
        assert report.op_histogram[op] >= 1, (op, dict(report.op_histogram))
    op_by_op = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)


@pytest.mark.parametrize("name, recurrent", [("kws_gru", "QuantGRU"), ("kws_lstm", "QuantLSTM")])
def test_keyword_spotters_quantize_to_unrolled_recurrent_layers(name, recurrent):
    model = models.build_model(name, (49, 10, 1), num_classes=12)
    assert model.output_shape == (None, 12)
    qat = tfqat.quantize_model(model)
    counts = layer_counts(qat)
    assert counts[recurrent] == 1 and counts["QuantConv1D"] == 1
    layer = next(layer for layer in qat.layers if type(layer).__name__ == recurrent)
    assert layer.timesteps == 25  # 49 frames, stride 2


@pytest.mark.slow
def test_kws_gru_trains_end_to_end_and_exports_integer_only(tmp_path):
    # No speech data offline: the job reads the 8x8 digits row by row (8 frames of 8 values).
    from tfqat.training.pipeline import PipelineConfig, run

    metrics = run(PipelineConfig(model="kws_gru", dataset="digits", float_epochs=20,
                                 qat_epochs=3, learning_rate=5e-3, qat_learning_rate=5e-4,
                                 output_dir=str(tmp_path), verbose=0))
    assert metrics["float_accuracy"] >= 0.85, metrics
    assert metrics["int8_accuracy"] >= metrics["float_accuracy"] - 0.05, metrics
    assert metrics["tflite_qat_agreement"] >= 0.97, metrics
    report = tfqat.inspect_tflite(str(tmp_path / "model_int8.tflite"))
    assert report.integer_only and report.op_histogram["LOGISTIC"] >= 4, str(report)
