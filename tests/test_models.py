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
