"""Each rewrite rule is data: check its pattern and what its builder makes."""

import keras
import numpy as np
import pytest

from tfqat.nn import layers as qlayers
from tfqat.rewrite import rules
from tfqat.config import LayerQuantConfig
from tfqat.rewrite.graph import flatten_model


def built(layer, shape):
    layer(keras.Input(shape))
    return layer


@pytest.mark.parametrize("layer,kind", [
    (keras.layers.ReLU(), "relu"),
    (keras.layers.ReLU(max_value=6.0), "relu6"),
    (keras.layers.ReLU(max_value=4.0), None),
    (keras.layers.ReLU(negative_slope=0.1), "leaky_relu"),
    (keras.layers.ReLU(max_value=6.0, negative_slope=0.1), None),
    (keras.layers.LeakyReLU(0.2), "leaky_relu"),
    (keras.layers.ELU(), "elu"),
    (keras.layers.ELU(alpha=0.5), None),
    (keras.layers.Activation("hard_swish"), "hard_silu"),
    (keras.layers.Activation("swish"), "silu"),
    (keras.layers.Activation("gelu"), "gelu"),
    (keras.layers.Activation("hard_sigmoid"), "hard_sigmoid"),
    (keras.layers.Activation("relu6"), "relu6"),
    (keras.layers.Activation("sigmoid"), "sigmoid"),
    (keras.layers.Activation("linear"), "linear"),
    (keras.layers.Softmax(), "softmax"),
    (keras.layers.Softmax(axis=1), "softmax"),  # int8 TRANSPOSE, SOFTMAX, TRANSPOSE
    (keras.layers.Softmax(axis=[1, 2]), None),
    (keras.layers.Dense(2), None),
])
def test_activation_kind(layer, kind):
    assert rules.activation_kind(layer) == kind


def test_rule_table_order_and_names():
    assert [r.name for r in rules.RULES] == [
        "linear_bn_relu", "separable_bn_relu", "batchnorm_relu", "channel_affine", "concatenate", "merge_relu",
        "max_min", "average",
        "global_average_pool", "relu", "single_op_activation", "decomposed_activation", "prelu",
        "fixed_range_activation", "nearest_upsampling", "scale_preserving", "same_scale_op", "layer_normalization",
        "group_normalization", "unit_normalization",
        "multi_head_attention", "einsum_dense_relu", "embedding", "position_embedding",
        "recurrent", "bidirectional_recurrent", "time_distributed_linear", "inference_identity", "random_crop",
        "layer_scale", "custom_scale", "keras_op_scale_preserving", "keras_op_own_scale", "keras_op_tied",
        "keras_op_clip", "keras_op_concatenation"]
    fused = rules.RULES[0]
    assert [s.name for s in fused.pattern] == ["linear", "bn", "relu"]
    assert [s.optional for s in fused.pattern] == [False, True, True]


@pytest.mark.parametrize("layer,expected", [
    (keras.layers.MaxPooling2D(2), True), (keras.layers.Flatten(), True),
    (keras.layers.Dropout(0.5), True), (keras.layers.UpSampling2D(interpolation="nearest"), True),
    (keras.layers.UpSampling2D(interpolation="bilinear"), False),
    (keras.layers.AveragePooling2D(2), False), (keras.layers.Conv2D(1, 1), False),
])
def test_scale_preserving_predicate(layer, expected):
    assert rules.is_scale_preserving(layer) == expected


@pytest.mark.parametrize("layer,expected", [
    (keras.layers.UpSampling2D(interpolation="bilinear"), True),
    (keras.layers.UpSampling2D(interpolation="nearest"), False),  # scale_preserving has it
    (keras.layers.Resizing(4, 4), True), (keras.layers.Resizing(4, 4, interpolation="nearest"), True),
    (keras.layers.Resizing(4, 4, interpolation="bicubic"), False),
    (keras.layers.Resizing(4, 4, crop_to_aspect_ratio=True), False),
])
def test_resize_predicate(layer, expected):
    assert rules.is_resize(layer) == expected


@pytest.mark.parametrize("layer,expected", [
    (keras.layers.AveragePooling2D(2), True), (keras.layers.AveragePooling1D(2), True),
    (keras.layers.UpSampling2D(interpolation="bilinear"), True),
    (keras.layers.GlobalAveragePooling2D(), False), (keras.layers.MaxPooling2D(), False),
])
def test_same_scale_op_predicate(layer, expected):
    assert rules.is_same_scale_op(layer) == expected
    assert rules.is_global_average_pool(layer) == isinstance(
        layer, keras.layers.GlobalAveragePooling2D)


def test_only_a_division_by_a_constant_is_an_int8_op():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], [a / 2.0, a / b, 2.0 / a, keras.ops.divide(a, np.float32(3.0))])
    nodes = [node for node in flatten_model(model).nodes
             if rules.keras_op_name(node.layer) in rules.DIVISION_OPS]
    assert [rules.divides_by_tensor(node) for node in nodes] == [False, True, True, False]
    assert not rules.divides_by_tensor(flatten_model(keras.Model(a, a * 2.0)).nodes[0])


def test_keras_ops_in_a_graph_are_merges():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.ReLU(6.0)(inp + 3.0) * (1 / 6.0) - inp)
    ops = [node.layer for node in flatten_model(model).nodes
           if not isinstance(node.layer, keras.layers.Layer)]
    names = sorted(rules.keras_op_name(op) for op in ops)
    assert names == ["Add", "Multiply", "Subtract"]
    assert all(rules.is_merge(op) for op in ops)
    assert rules.keras_op_name(keras.layers.Add()) is None


@pytest.mark.parametrize("layer,expected", [
    (keras.layers.GlobalMaxPooling2D(), True), (keras.layers.Permute((2, 1)), True),
    (keras.layers.Cropping1D(1), True), (keras.layers.LayerNormalization(), False),
])
def test_new_scale_preserving_layers(layer, expected):
    assert rules.is_scale_preserving(layer) == expected


def test_separable_builder_splits_and_folds_into_the_pointwise():
    sep = built(keras.layers.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, use_bias=False,
                                             name="s"), (8, 8, 3))
    bn = built(keras.layers.BatchNormalization(name="b"), (4, 4, 5))
    cfg = LayerQuantConfig(weight_bits=6, activation_bits=7)
    replacement = rules.build_separable({"separable": sep, "bn": bn, "relu": keras.layers.ReLU()},
                                        cfg)
    depthwise, between, pointwise = replacement.layers
    assert isinstance(depthwise, qlayers.QuantDepthwiseConv2D) and depthwise.name == "s_depthwise"
    assert (depthwise.strides, depthwise.depth_multiplier, depthwise.batchnorm) == ((2, 2), 2, None)
    assert between.name == "s_depthwise_fq" and between.bits == 7
    assert isinstance(pointwise, qlayers.QuantConv2D) and pointwise.name == "s"
    assert pointwise.kernel_size == (1, 1) and pointwise.batchnorm and pointwise.activation == "relu"
    assert pointwise.weight_bits == depthwise.weight_bits == 6


def test_channel_affine_builder_composes_rescaling_and_normalization():
    rescale = keras.layers.Rescaling(1 / 255.0, offset=0.5)
    norm = keras.layers.Normalization(mean=[0.1, 0.2], variance=[4.0, 9.0])
    norm.build((None, 3, 3, 2))
    replacement = rules.build_channel_affine({"affine": rescale, "affine2": norm},
                                             LayerQuantConfig())
    (layer,) = replacement.layers
    layer.build((None, 3, 3, 2))
    replacement.load_weights()
    np.testing.assert_allclose(layer.kernel.numpy(), [1 / 255 / 2, 1 / 255 / 3], rtol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), [(0.5 - 0.1) / 2, (0.5 - 0.2) / 3], rtol=1e-6)


def test_channel_affine_is_per_channel_whatever_the_config():
    norm = keras.layers.Normalization(mean=[0.1, 0.2], variance=[4.0, 9.0])
    norm.build((None, 3, 3, 2))
    replacement = rules.build_channel_affine({"affine": norm}, LayerQuantConfig(per_channel=False))
    assert replacement.layers[0].per_channel is True


def test_channel_affine_with_more_values_than_input_channels_names_the_layer():
    # Keras broadcasts a 1-channel input to 3 channels; one op per input channel cannot.
    rescale = keras.layers.Rescaling([1.0, 2.0, 3.0], name="rgb_scale")
    replacement = rules.build_channel_affine({"affine": rescale}, LayerQuantConfig())
    replacement.layers[0].build((None, 4, 4, 1))
    with pytest.raises(ValueError, match="Rescaling 'rgb_scale' has 3 per-channel values but "
                                         "the input has 1 channels.*exclude"):
        replacement.load_weights()


def test_channel_affines_of_different_channel_counts_are_refused():
    norm = keras.layers.Normalization(mean=[0.1, 0.2], variance=[4.0, 9.0], name="n2")
    norm.build((None, 3, 3, 2))
    rescale = keras.layers.Rescaling([1.0, 2.0, 3.0], name="r3")
    with pytest.raises(ValueError, match="'r3' and Normalization 'n2'.*Exclude"):
        rules.build_channel_affine({"affine": rescale, "affine2": norm}, LayerQuantConfig())


def test_load_affine_checks_shapes_and_names_the_layer():
    layer = qlayers.QuantRescaling(name="qr")
    with pytest.raises(ValueError, match="'qr' is not built"):
        layer.load_affine([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    layer.build((None, 2, 2, 3))
    with pytest.raises(ValueError, match=r"'qr': scale has shape \(2,\).*3 channels"):
        layer.load_affine([1.0, 2.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"'qr': offset has shape \(\)"):
        layer.load_affine([1.0, 2.0, 3.0], 0.0)


def test_normalization_over_other_axes_is_refused():
    norm = keras.layers.Normalization(axis=(1, 2, 3), mean=0.0, variance=1.0, name="n_all")
    norm.build((None, 2, 2, 3))
    with pytest.raises(ValueError, match="'n_all'.*axis=-1"):
        rules.build_channel_affine({"affine": norm}, LayerQuantConfig())


def test_fused_linear_builder_copies_settings():
    conv = built(keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False, name="c"),
                 (8, 8, 3))
    bn = built(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="b"), (4, 4, 4))
    relu = keras.layers.ReLU(6.0)
    cfg = LayerQuantConfig(weight_bits=4, bn_freeze_delay=7)
    replacement = rules.build_fused_linear({"linear": conv, "bn": bn, "relu": relu}, cfg)
    (fused,) = replacement.layers
    assert isinstance(fused, qlayers.QuantConv2D) and fused.name == "c"
    assert (fused.strides, fused.padding, fused.use_bias) == ((2, 2), "same", False)
    assert fused.batchnorm == {"epsilon": 1e-5, "momentum": 0.9, "center": True, "scale": True}
    assert (fused.activation, fused.weight_bits, fused.bn_freeze_delay) == ("relu6", 4, 7)
    assert replacement.output == rules.TRACKED


def test_fused_linear_keeps_groups_and_refuses_channels_first():
    grouped = built(keras.layers.Conv2D(4, 3, groups=2, name="g"), (8, 8, 4))
    (fused,) = rules.build_fused_linear({"linear": grouped}, LayerQuantConfig()).layers
    assert isinstance(fused, qlayers.QuantConv2D) and fused.groups == 2
    # One input channel per group stays a depthwise convolution.
    per_channel = built(keras.layers.Conv2D(8, 3, groups=4, name="dw"), (8, 8, 4))
    (fused,) = rules.build_fused_linear({"linear": per_channel}, LayerQuantConfig()).layers
    assert isinstance(fused, qlayers.QuantDepthwiseConv2D) and fused.depth_multiplier == 2
    channels_first = keras.layers.Conv2D(4, 3, data_format="channels_first", name="cf")
    with pytest.raises(ValueError, match="'cf'.*channels_last"):
        rules.build_fused_linear({"linear": channels_first}, LayerQuantConfig())


def test_batchnorm_on_another_axis_is_refused():
    bn = built(keras.layers.BatchNormalization(axis=1, name="bn_c"), (4, 5, 5))
    with pytest.raises(ValueError, match="'bn_c'.*axis"):
        rules.build_standalone_batchnorm({"bn": bn}, LayerQuantConfig())


def test_fixed_range_builder_uses_tflite_ranges():
    replacement = rules.build_fixed_range({"activation": keras.layers.Activation("tanh")},
                                          LayerQuantConfig())
    assert replacement.output.kind == "fixed"
    assert replacement.output.fixed_range == (-1.0, 127 / 128)


def test_clone_builders_copy_layers_and_weights():
    add = keras.layers.Add(name="a")
    replacement = rules.build_tracked({"merge": add, "relu": keras.layers.ReLU(name="r")},
                                      LayerQuantConfig())
    assert [l.name for l in replacement.layers] == ["a", "r"]
    assert all(new is not old for new, old in zip(replacement.layers, [add]))


def test_custom_scale_rule_matches_inception_resnets_layer_and_builds_mul_add():
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    from tfqat.nn.residual import QuantScaledAdd

    custom = CustomScaleLayer(0.1, name="block17_3")
    assert rules.applications.is_custom_scale(custom)
    assert not rules.applications.is_custom_scale(keras.layers.Add())
    cfg = LayerQuantConfig(weight_bits=6, activation_bits=7)
    relu = keras.layers.Activation("relu", name="block17_3_ac")
    replacement = rules.applications.build_custom_scale({"scale": custom, "relu": relu}, cfg)
    scaled, tail = replacement.layers
    assert isinstance(scaled, QuantScaledAdd) and scaled.name == "block17_3"
    assert (scaled.scale, scaled.weight_bits, scaled.activation_bits) == (0.1, 6, 7)
    assert type(tail) is keras.layers.Activation and tail.name == "block17_3_ac"
    assert replacement.output == rules.TRACKED
    (alone,) = rules.applications.build_custom_scale({"scale": custom, "relu": None}, cfg).layers
    assert isinstance(alone, QuantScaledAdd)
