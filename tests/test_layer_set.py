"""Each supported layer type through quantize_model -> calibrate -> export_tflite.

Small models with the real converter and LiteRT: the .tflite must be
integer-only, hold the TFLite ops we expect for the layer (the converter facts
in tfqat/rewrite/rules.py and tfqat/nn/activations.py), and match the QAT model op by op
within 1 LSB and end to end within 2 output LSBs.
"""

import keras
import numpy as np
import pytest

import tfqat
from tfqat.diagnostics.evaluation import compare_to_model
from tfqat.diagnostics.fidelity import op_fidelity
from tiny_models import randomize_batchnorm

L = keras.layers


def head(x):
    return L.Dense(5, name="head")(L.Flatten()(x))


def conv1d_bn_relu(inp):
    x = L.Conv1D(6, 3, use_bias=False, name="conv1d")(inp)
    return head(L.ReLU()(L.BatchNormalization()(x)))


def conv1d_causal(inp):
    return head(L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu",
                         name="conv1d")(inp))


def transpose_bn_relu(inp):
    x = L.Conv2DTranspose(6, 3, strides=2, use_bias=False, name="tconv")(inp)
    return head(L.ReLU()(L.BatchNormalization()(x)))


def transpose_plain(inp):
    return head(L.Conv2DTranspose(6, 3, strides=2, padding="same", name="tconv")(inp))


def separable_bn_relu(inp):
    x = L.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(inp)
    return head(L.ReLU(6.0)(L.BatchNormalization()(x)))


def separable_activation(inp):
    return head(L.SeparableConv2D(6, 3, depth_multiplier=2, activation="relu", name="sep")(inp))


def activation(kind):
    def build(inp):
        return head(L.Activation(kind, name="act")(L.Conv2D(4, 3, name="conv")(inp)))
    return build


def leaky_relu_layer(inp):
    return head(L.LeakyReLU(0.1, name="act")(L.Conv2D(4, 3, name="conv")(inp)))


def elu_layer(inp):
    return head(L.ELU(name="act")(L.Conv2D(4, 3, name="conv")(inp)))


def squeeze_excite(inp):
    se = L.GlobalAveragePooling2D(keepdims=True)(inp)
    se = L.Conv2D(3, 1, activation="sigmoid", name="se_conv")(se)
    return head(L.Multiply(name="excite")([inp, se]))


def hard_sigmoid_ops(inp):
    # MobileNetV3 writes hard_sigmoid with Keras ops: ReLU(6)(x + 3) * (1 / 6).
    x = L.Conv2D(4, 1, name="conv")(inp)
    return head(L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))


def divide_by_constant(inp):
    # A division by a constant is MUL by its reciprocal (a division by a tensor is refused).
    return head(L.Conv2D(4, 3, name="conv")(inp) / 4.0)


def rescaling(inp):
    return head(L.Conv2D(4, 3, name="conv")(L.Rescaling(1 / 127.5, offset=-1.0)(inp)))


def rescaling_normalization(inp):
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0])(x)
    return head(L.Conv2D(4, 3, name="conv")(x))


def bilinear_upsampling(inp):
    return head(L.UpSampling2D(interpolation="bilinear")(L.Conv2D(4, 3, name="conv")(inp)))


def resizing(inp):
    return head(L.Resizing(8, 8)(L.Conv2D(4, 3, name="conv")(inp)))


def global_max_pooling(inp):
    return L.Dense(5, name="head")(L.GlobalMaxPooling2D()(L.Conv2D(4, 3, name="conv")(inp)))


def permute(inp):
    return head(L.Permute((2, 1, 3))(L.Conv2D(4, 3, name="conv")(inp)))


def transition(inp):
    # DenseNet: BN -> ReLU -> 1x1 conv -> AveragePooling2D; AVERAGE_POOL_2D keeps its input scale.
    x = L.ReLU()(L.BatchNormalization()(inp))
    x = L.Conv2D(4, 1, use_bias=False, name="conv")(x)
    return head(L.AveragePooling2D(2, strides=2, name="pool")(x))


def inception_branches(inp):
    # InceptionV3 mixed0: a max pool read by a 1x1 conv and by an average pool, both branches
    # read only by a Concatenate.
    x = L.MaxPooling2D(3, strides=1, name="pool")(L.Conv2D(4, 1, activation="relu", name="c0")(inp))
    a = L.Conv2D(4, 1, activation="relu", name="branch_a")(x)
    b = L.AveragePooling2D(3, strides=1, padding="same", name="branch_pool")(x)
    b = L.Conv2D(4, 1, activation="relu", name="branch_b")(b)
    return head(L.Concatenate(name="mixed")([a, b]))


def same_scale_into_concat(same_scale):
    # GoogLeNet/U-Net style: an average pool (or bilinear resize) read only by a Concatenate.
    def build(inp):
        x = L.Conv2D(4, 1, activation="relu", name="conv")(inp)
        if same_scale == "pool":
            x = L.AveragePooling2D(3, strides=1, padding="same", name="pool")(x)
        else:
            x = L.UpSampling2D(interpolation="bilinear", name="up")(L.MaxPooling2D(name="mp")(x))
        other = L.Conv2D(4, 1, activation="relu", name="other")(inp)
        return head(L.Concatenate(name="cat")([x, other]))
    return build


def average_as_add_and_rescaling(inp):
    # A hand-written average: Add, then Rescaling(1 / n).
    a = L.Conv2D(4, 1, activation="relu", name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    return head(L.Rescaling(0.5, name="half")(L.Add(name="sum")([a, b])))


def preactivation(inp):
    # ResNet50V2/DenseNet: BatchNormalization -> ReLU -> Conv, with no conv before the BN.
    x = L.ReLU()(L.BatchNormalization(name="preact_bn")(inp))
    return head(L.Conv2D(4, 3, name="conv")(x))


IMAGE, SEQUENCE = (6, 6, 3), (10, 4)
# name: (builder, input shape, TFLite ops that must appear)
CASES = {
    "conv1d_bn_relu": (conv1d_bn_relu, SEQUENCE, {"CONV_2D": 2}),
    "conv1d_causal": (conv1d_causal, SEQUENCE, {"PAD": 1, "CONV_2D": 2}),
    "transpose_bn_relu": (transpose_bn_relu, (5, 5, 3), {"TRANSPOSE_CONV": 1}),
    "transpose_plain": (transpose_plain, (5, 5, 3), {"TRANSPOSE_CONV": 1}),
    "separable_bn_relu": (separable_bn_relu, IMAGE, {"DEPTHWISE_CONV_2D": 1, "CONV_2D": 2}),
    "separable_activation": (separable_activation, IMAGE, {"DEPTHWISE_CONV_2D": 1, "CONV_2D": 2}),
    "leaky_relu": (activation("leaky_relu"), IMAGE, {"LEAKY_RELU": 1}),
    "leaky_relu_layer": (leaky_relu_layer, IMAGE, {"LEAKY_RELU": 1}),
    "elu": (activation("elu"), IMAGE, {"MINIMUM": 1, "EXP": 1, "SUB": 1, "MAXIMUM": 1}),
    "elu_layer": (elu_layer, IMAGE, {"EXP": 1, "MAXIMUM": 1}),
    "hard_sigmoid": (activation("hard_sigmoid"), IMAGE, {"ADD": 1, "MUL": 1}),
    "hard_swish": (activation("hard_swish"), IMAGE, {"HARD_SWISH": 1}),
    "swish": (activation("swish"), IMAGE, {"LOGISTIC": 1, "MUL": 1}),
    "gelu": (activation("gelu"), IMAGE, {"GELU": 1}),
    "squeeze_excite": (squeeze_excite, IMAGE, {"MEAN": 1, "LOGISTIC": 1, "MUL": 1}),
    "hard_sigmoid_ops": (hard_sigmoid_ops, IMAGE, {"ADD": 1, "MUL": 1}),
    "divide_by_constant": (divide_by_constant, IMAGE, {"MUL": 1}),
    "rescaling": (rescaling, IMAGE, {"DEPTHWISE_CONV_2D": 1}),
    "rescaling_normalization": (rescaling_normalization, IMAGE, {"DEPTHWISE_CONV_2D": 1}),
    "bilinear_upsampling": (bilinear_upsampling, IMAGE, {"RESIZE_BILINEAR": 1}),
    "resizing": (resizing, IMAGE, {"RESIZE_BILINEAR": 1}),
    "global_max_pooling": (global_max_pooling, IMAGE, {"REDUCE_MAX": 1}),
    "permute": (permute, IMAGE, {"TRANSPOSE": 1}),
    "average_as_add_and_rescaling": (average_as_add_and_rescaling, IMAGE,
                                     {"ADD": 1, "DEPTHWISE_CONV_2D": 1}),
    "preactivation": (preactivation, IMAGE, {"DEPTHWISE_CONV_2D": 1, "CONV_2D": 2}),
    "transition": (transition, IMAGE, {"AVERAGE_POOL_2D": 1}),
    "inception_branches": (inception_branches, IMAGE, {"MAX_POOL_2D": 1, "AVERAGE_POOL_2D": 1,
                                                      "CONCATENATION": 1}),
    "average_pool_concat": (same_scale_into_concat("pool"), IMAGE,
                            {"AVERAGE_POOL_2D": 1, "CONCATENATION": 1}),
    "resize_concat": (same_scale_into_concat("resize"), IMAGE,
                      {"RESIZE_BILINEAR": 1, "CONCATENATION": 1}),
}

# QUANTIZE (int8 -> int8 requantization) ops a case needs: none. (elu: MAXIMUM requantizes one
# input to the other's scale; not counted. A same-scale op into a concatenation used to need one:
# AVERAGE_POOL_2D/RESIZE_BILINEAR keep their input's scale, so the conv before them now computes
# at the concatenation's.)
REQUANTIZE_OPS = {}
# Quantizers op_fidelity cannot compare: none. (Keras ops (`x + 3.0`, `x * c`) make TF ops
# outside any layer's name scope; op_fidelity used to look tensors up by name and missed them,
# and now finds them by their quantization.)
UNMATCHED = {}


# End-to-end bound, output LSBs. AVERAGE_POOL_2D rounds averages half away from zero in the
# int8 domain, FakeQuant half up: 2x2 means tie in a quarter of the values, and the Dense head
# adds up the 1-LSB differences.
E2E_MAX_LSB = {"transition": 3.0}


def exported(name, config=None):
    build, shape, _ = CASES[name]
    keras.backend.clear_session()  # auto-named Keras ops (UNMATCHED) restart at "multiply"
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="x")
    model = randomize_batchnorm(keras.Model(inp, build(inp)))
    x = np.random.default_rng(1).normal(0, 1, (32, *shape)).astype("float32")
    qat = tfqat.quantize_model(model, config)
    tfqat.calibrate(qat, x)
    return model, qat, tfqat.export_tflite(qat), x


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_exports_integer_only_and_matches_the_qat_model(name):
    _, qat, flatbuffer, x = exported(name)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]
    for op, count in CASES[name][2].items():
        assert report.op_histogram[op] >= count, (op, dict(report.op_histogram))
    if name not in ("elu", "elu_layer"):
        requantizing = report.op_histogram.get("QUANTIZE", 0)
        assert requantizing == REQUANTIZE_OPS.get(name, 0), dict(report.op_histogram)
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert op_by_op.unmatched == UNMATCHED.get(name, ()), str(op_by_op)
    assert op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.max_diff_lsb <= E2E_MAX_LSB.get(name, 2.0) + 1e-3, comparison
    assert comparison.agreement >= 0.95, comparison


def test_qat_model_matches_the_float_model_at_16_bits():
    # Every new layer computes the float layer's function once quantization is fine. swish's
    # inner sigmoid stays 8-bit (LOGISTIC's int8 output): up to 1/512 of |x| off.
    atol = {"swish": 1e-2}
    for name in ("separable_bn_relu", "transpose_bn_relu", "conv1d_bn_relu", "elu", "swish",
                 "hard_sigmoid", "rescaling_normalization", "hard_sigmoid_ops"):
        build, shape, _ = CASES[name]
        keras.utils.set_random_seed(0)
        inp = keras.Input(shape)
        model = randomize_batchnorm(keras.Model(inp, build(inp)))
        x = np.random.default_rng(1).normal(0, 1, (16, *shape)).astype("float32")
        qat = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
        tfqat.calibrate(qat, x)
        np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=atol.get(name, 3e-3), err_msg=name)


def test_separable_conv_splits_into_depthwise_and_pointwise_with_bn_folded():
    _, qat, _, _ = exported("separable_bn_relu")
    depthwise, pointwise = qat.get_layer("sep_depthwise"), qat.get_layer("sep")
    assert isinstance(depthwise, tfqat.QuantDepthwiseConv2D) and depthwise.batchnorm is None
    assert isinstance(pointwise, tfqat.QuantConv2D) and pointwise.kernel_size == (1, 1)
    assert pointwise.batchnorm is not None and pointwise.activation == "relu6"
    assert isinstance(qat.get_layer("sep_depthwise_fq"), tfqat.ActivationQuantizer)


def test_channel_affine_stays_per_channel_and_exact_with_per_tensor_config():
    config = tfqat.QuantConfig(per_channel=False)
    model, qat, flatbuffer, x = exported("rescaling_normalization", config)
    (rescaling,) = [l for l in model.layers if isinstance(l, L.Rescaling)]
    (normalization,) = [l for l in model.layers if isinstance(l, L.Normalization)]
    assert qat.get_layer("conv").per_channel is False
    assert qat.get_layer(rescaling.name).per_channel is True
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    (op,) = [op for op in report.ops if op.name == "DEPTHWISE_CONV_2D"]
    # One weight scale per channel, each weight on its channel's largest level: exact.
    expected = 1 / 255.0 / np.sqrt(np.asarray(normalization.variance).reshape(-1))
    np.testing.assert_allclose(op.inputs[1].scales * 127, expected, rtol=1e-6)
    op_by_op = op_fidelity(qat, flatbuffer, x[:8])
    assert not op_by_op.unmatched and op_by_op.max_diff_lsb <= 1.0 + 1e-3, str(op_by_op)
    comparison = compare_to_model(qat, flatbuffer, x)
    assert comparison.max_diff_lsb <= 2.0 + 1e-3 and comparison.agreement >= 0.95, comparison


def test_transposed_conv_is_quantized_per_tensor():
    _, qat, flatbuffer, _ = exported("transpose_bn_relu")
    assert qat.get_layer("tconv").per_channel is False
    report = tfqat.inspect_tflite(flatbuffer)
    (op,) = [op for op in report.ops if op.name == "TRANSPOSE_CONV"]
    assert op.inputs[1].dtype == "int8" and op.inputs[1].scales.size == 1
