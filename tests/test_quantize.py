import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.nn.quantizers import ActivationQuantizer
from tiny_models import calibrate_quantizers, mixed_model, random_images, randomize_batchnorm


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def count_ops(model, x, op_types):
    fn = tf.function(lambda t: model(t, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([None, *x.shape[1:]])).graph
    ops = list(graph.get_operations())
    for function in graph._functions.values():
        ops += list(function.graph.get_operations())
    return {t: sum(op.type == t for op in ops) for t in op_types}


def test_conv_bn_relu_chains_become_fused_layers():
    qat = tfqat.quantize_model(mixed_model())
    types = layer_types(qat)
    assert "BatchNormalization" not in types
    assert "ReLU" in types and types.count("ReLU") == 1  # only the one after Add stays
    conv1 = qat.get_layer("conv1")
    assert isinstance(conv1, tfqat.QuantConv2D) and conv1.batchnorm and conv1.activation == "relu"
    assert qat.get_layer("dw").activation == "relu6"
    assert qat.get_layer("conv2").activation == "relu"  # the layer's own activation= argument
    fc = qat.get_layer("fc")
    assert isinstance(fc, tfqat.QuantDense) and fc.batchnorm and fc.activation == "relu"


def test_fake_quant_placement_counts():
    model = mixed_model()
    qat = tfqat.quantize_model(model)
    x = random_images(4)
    counts = count_ops(qat, x, ["FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"])
    # Activations: input, conv1, dw, add+relu, conv2, gap, fc, logits, softmax = 9.
    # No fake quant after MaxPooling. Weights, per channel: conv1, dw, conv2, fc, logits = 5.
    assert counts == {"FakeQuantWithMinMaxVars": 9, "FakeQuantWithMinMaxVarsPerChannel": 5}
    quantizers = [l for l in qat.layers if isinstance(l, ActivationQuantizer)]
    fixed = [l.name for l in quantizers if l.fixed_range is not None]
    assert fixed == ["logits_activation_fq"]


def test_per_tensor_config_uses_per_tensor_ops():
    qat = tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(per_channel=False))
    counts = count_ops(qat, random_images(2), ["FakeQuantWithMinMaxVarsPerChannel"])
    assert counts["FakeQuantWithMinMaxVarsPerChannel"] == 0


def test_input_model_is_not_modified():
    model = randomize_batchnorm(mixed_model())
    before = [w.numpy().copy() for w in model.weights]
    names = [l.name for l in model.layers]
    qat = tfqat.quantize_model(model)
    qat(random_images(8), training=True)
    assert [l.name for l in model.layers] == names
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_qat_model_computes_the_float_model_at_high_precision():
    model = randomize_batchnorm(mixed_model())
    cfg = tfqat.QuantConfig(weight_bits=16, activation_bits=16)
    qat = tfqat.quantize_model(model, cfg)
    x = random_images(16)
    calibrate_quantizers(qat, x)
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


def test_sequential_and_nested_models_are_flattened():
    inner = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, use_bias=False, name="inner_conv"),
        keras.layers.BatchNormalization(name="inner_bn"),
        keras.layers.ReLU(name="inner_relu"),
    ], name="block")
    inp = keras.Input((8, 8, 3))
    x = inner(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(2, name="head")(x)
    model = randomize_batchnorm(keras.Model(inp, out))
    randomize_batchnorm(inner)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16, activation_bits=16))
    assert not any(isinstance(l, keras.Model) for l in qat.layers)
    fused = qat.get_layer("inner_conv")
    assert isinstance(fused, tfqat.QuantConv2D) and fused.batchnorm and fused.activation == "relu"
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    calibrate_quantizers(qat, x)
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


def test_sequential_model_is_accepted():
    model = keras.Sequential([keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.build((None, 3))
    qat = tfqat.quantize_model(model)
    assert layer_types(qat).count("QuantDense") == 2


def test_activation_layer_relu_is_fused_and_standalone_bn_is_quantized():
    inp = keras.Input((6, 6, 2))
    x = keras.layers.BatchNormalization(name="bn_in")(inp)
    x = keras.layers.Conv2D(3, 3, name="conv")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    qat = tfqat.quantize_model(keras.Model(inp, x))
    assert isinstance(qat.get_layer("bn_in"), tfqat.QuantBatchNormalization)
    assert qat.get_layer("conv").activation == "relu"
    assert "Activation" not in layer_types(qat)


def test_a_branching_tensor_stops_the_chain():
    inp = keras.Input((6, 6, 2))
    c = keras.layers.Conv2D(3, 3, name="conv")(inp)
    a = keras.layers.BatchNormalization(name="bn")(c)
    out = keras.layers.Concatenate(name="cat")([a, c])
    qat = tfqat.quantize_model(keras.Model(inp, out))
    assert qat.get_layer("conv").batchnorm is None  # conv output is needed by the concat
    assert isinstance(qat.get_layer("bn"), tfqat.QuantBatchNormalization)


def test_unsupported_layer_error_names_layer_class_and_ways_out():
    inp = keras.Input((4, 3))
    x = keras.layers.UpSampling1D(name="up")(inp)
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(keras.Model(inp, x))
    message = str(info.value)
    assert "'up'" in message and "UpSampling1D" in message
    assert "exclude" in message and "overrides" in message


def test_excluded_layer_stays_float_and_overrides_apply():
    cfg = tfqat.QuantConfig(exclude=("logits",), overrides={"conv1": {"weight_bits": 4}})
    qat = tfqat.quantize_model(mixed_model(), cfg)
    assert type(qat.get_layer("logits")) is keras.layers.Dense
    assert qat.get_layer("conv1").weight_bits == 4
    assert qat.get_layer("conv2").weight_bits == 8


def test_exclude_by_class():
    qat = tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(exclude=(keras.layers.Dense,)))
    assert not any(isinstance(l, tfqat.QuantDense) for l in qat.layers)


def test_unknown_names_in_config_are_refused():
    with pytest.raises(ValueError, match="not in the model"):
        tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(exclude=("conv99",)))


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(tfqat.GraphError, match="subclassed"):
        tfqat.quantize_model(net)


def test_unbuilt_model_is_refused():
    with pytest.raises(tfqat.GraphError, match="not built"):
        tfqat.quantize_model(keras.Sequential([keras.layers.Dense(2)]))


def test_shared_layer_with_weights_is_refused():
    inp = keras.Input((4,))
    dense = keras.layers.Dense(4, name="shared")
    out = dense(dense(inp))
    with pytest.raises(tfqat.UnsupportedLayerError, match="'shared'.*2 times"):
        tfqat.quantize_model(keras.Model(inp, out))


def test_qat_model_trains_with_fit():
    qat = tfqat.quantize_model(mixed_model(), tfqat.QuantConfig(bn_freeze_delay=3))
    qat.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    x = random_images(64)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    history = qat.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert qat.get_layer("conv1").bn_frozen()
    assert all(l.is_calibrated for l in qat.layers if isinstance(l, ActivationQuantizer))


def test_squeeze_excite_with_keras_ops_gets_a_fake_quant_on_every_int8_tensor():
    # MobileNetV3: conv -> ReLU(6)(x + 3) * (1 / 6) -> Multiply. In TFLite: CONV_2D, ADD (RELU6
    # fused), MUL by a constant and MUL, each writing an int8 tensor.
    inp = keras.Input((6, 6, 4), name="image")
    gate = keras.layers.Conv2D(4, 1, name="gate")(keras.layers.GlobalAveragePooling2D(
        keepdims=True, name="squeeze")(inp))
    gate = keras.layers.ReLU(6.0, name="hs_relu")(gate + 3.0) * (1.0 / 6.0)
    out = keras.layers.Multiply(name="excite")([inp, gate])
    qat = tfqat.quantize_model(keras.Model(inp, out))
    quantizers = [l.name for l in qat.layers if isinstance(l, ActivationQuantizer)]
    assert len(quantizers) == 6
    assert {"image_fq", "squeeze_fq", "gate_fq", "hs_relu_fq", "excite_fq"} <= set(quantizers)
    assert "ReLU" in layer_types(qat)  # fused into the ADD by the converter, not by tfqat


def test_separable_conv_activation_argument_is_split_off():
    inp = keras.Input((6, 6, 3))
    x = keras.layers.SeparableConv2D(4, 3, activation="silu", name="sep")(inp)
    qat = tfqat.quantize_model(keras.Model(inp, x))
    assert qat.get_layer("sep").activation is None
    assert qat.get_layer("sep_activation").kind == "silu"


def test_excluded_weightless_layer_is_copied_and_the_user_model_keeps_one_node():
    inp = keras.Input((4,))
    wave = keras.layers.Lambda(lambda t: tf.sin(t), name="wave")  # from_config refuses it
    flat = keras.layers.Flatten(name="flat")
    out = keras.layers.Dense(2)(flat(wave(keras.layers.Dense(3)(inp))))
    model = keras.Model(inp, out)
    cfg = tfqat.QuantConfig(exclude=("wave", "flat"), weight_bits=16, activation_bits=16)
    qat = tfqat.quantize_model(model, cfg)
    for layer in (wave, flat):
        copy = qat.get_layer(layer.name)
        assert copy is not layer and type(copy) is type(layer)
        assert len(layer._inbound_nodes) == 1  # debugging.layer_report's float counterpart
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    calibrate_quantizers(qat, x)
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


@pytest.mark.parametrize("divide", [lambda a, b: a / b, lambda a, b: 2.0 / a])
def test_division_by_a_tensor_is_refused_with_the_op_named(divide):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(2)(divide(a, b)))
    (op,) = [op for op in model.operations if type(op).__name__ == "TrueDivide"]
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(model)
    message = str(info.value)
    assert f"'{op.name}' (TrueDivide)" in message and "int8 DIV" in message
    assert f"exclude=('{op.name}',)" in message
    # The way out that the message names works.
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(exclude=(op.name,)))
    assert [type(o).__name__ for o in qat.operations if o.name == op.name] == ["TrueDivide"]


@pytest.mark.parametrize("merge", [keras.layers.Add, keras.layers.Multiply])
def test_a_merge_of_three_tensors_is_refused_with_the_layer_named(merge):
    inputs = [keras.Input((4,), name=name) for name in "abc"]
    model = keras.Model(inputs, keras.layers.Dense(2)(merge(name="wide")(inputs)))
    with pytest.raises(tfqat.UnsupportedLayerError) as info:
        tfqat.quantize_model(model)
    message = str(info.value)
    assert f"'wide' ({merge.__name__}) of 3 inputs" in message
    assert "exclude=('wide',)" in message
    # Two inputs are fine.
    tfqat.quantize_model(keras.Model(inputs[:2], merge()(inputs[:2])))


def test_division_by_a_constant_is_quantized():
    inp = keras.Input((4,))
    qat = tfqat.quantize_model(keras.Model(inp, keras.layers.Dense(2)(inp) / 4.0))
    kinds = [type(op).__name__ for op in qat.operations]
    assert kinds[-2:] == ["TrueDivide", "ActivationQuantizer"]


@pytest.mark.parametrize("same_scale", [
    lambda: keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool"),
    lambda: keras.layers.UpSampling2D(interpolation="bilinear", name="pool"),
])
def test_same_scale_op_read_only_by_a_concatenation_passes_its_scale_to_its_input(same_scale):
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 1, name="a")(inp)
    b = keras.layers.Conv2D(4, 1, name="b")(inp)
    pooled = same_scale()(a)
    if pooled.shape[1] != 6:
        b = keras.layers.UpSampling2D(name="b_up")(b)
    qat = tfqat.quantize_model(keras.Model(inp, keras.layers.Concatenate(name="cat")([pooled, b])))
    # The pool keeps its input's scale, so conv "a" computes at the concatenation's scale:
    # one quantizer, called on a and the pool, on b and (tracking) on cat; no a_fq,
    # which made the converter requantize the pool's output.
    cat_fq = qat.get_layer("cat_fq")
    assert "a_fq" not in [layer.name for layer in qat.layers]
    callers = [node.input_tensors[0]._keras_history.operation.name
               for node in cat_fq._inbound_nodes]
    assert sorted(callers) == ["a", "b", "cat", "pool"]
    decisions = {d.float_layers[0]: d for d in tfqat.record_of(qat).decisions}
    assert decisions["a"].scale_policy == "concat" and decisions["pool"].scale_policy == "tied"


@pytest.fixture
def global_policy():
    """Sets a global dtype policy for one test and restores the previous one after."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


# Both policies and both orders, in two cases (each exports): the policy set before building
# the float model, or only before quantize_model.
@pytest.mark.parametrize("policy,when", [("mixed_float16", "before"), ("mixed_bfloat16", "after")])
def test_mixed_precision_policy_trains_and_exports_integer_only(global_policy, policy, when):
    if when == "before":  # the float model itself is built under the mixed policy
        global_policy(policy)
    model = randomize_batchnorm(mixed_model())
    reference_weights = model.get_weights()
    global_policy(policy)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=2))
    assert keras.config.dtype_policy().name == policy  # the user's policy is left as it was
    assert {layer.dtype_policy.name for layer in qat.layers} == {"float32"}
    x, y = random_images(16), np.arange(16) % 4
    qat.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    history = qat.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 4 steps: across the freeze
    assert np.isfinite(history.history["loss"]).all()
    assert qat.get_layer("conv1").bn_frozen()
    report = tfqat.inspect_tflite(tfqat.export_tflite(qat))
    assert report.integer_only and "CAST" not in report.op_histogram
    # The same QAT model as under float32: built from the same weights, it predicts the same.
    keras.config.set_dtype_policy("float32")
    model_32 = mixed_model()
    model_32.set_weights(reference_weights)
    untrained = tfqat.quantize_model(model_32)
    calibrate_quantizers(untrained, x)
    global_policy(policy)
    fresh = tfqat.quantize_model(model)
    calibrate_quantizers(fresh, x)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), untrained.predict(x, verbose=0))
