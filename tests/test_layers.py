"""BN folding math of the fused layers against Keras Conv -> BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat

from tfqat.nn.activations import QuantActivation
from tfqat.nn.layers import (QuantBatchNormalization, QuantConv1D, QuantConv2D, QuantConv2DTranspose,
                          QuantDense, QuantDepthwiseConv2D, QuantRescaling)

NO_QUANT_BITS = 16  # quantization effectively off


def float_pair(kind, use_bias, input_shape):
    """A float linear layer and a BN after it, built, with non-trivial BN state."""
    if kind == "conv":
        linear = keras.layers.Conv2D(6, 3, padding="same", use_bias=use_bias)
    elif kind == "depthwise":
        linear = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=use_bias)
    elif kind == "conv1d":
        linear = keras.layers.Conv1D(6, 3, padding="causal", use_bias=use_bias)
    elif kind == "transpose":
        linear = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", use_bias=use_bias)
    else:
        linear = keras.layers.Dense(5, use_bias=use_bias)
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    y = linear(keras.Input(input_shape[1:]))
    bn(y)
    rng = np.random.default_rng(3)
    channels = y.shape[-1]
    if use_bias:
        linear.bias.assign(rng.normal(size=channels).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 2, channels).astype("float32"))
    bn.beta.assign(rng.normal(size=channels).astype("float32"))
    bn.moving_mean.assign(rng.normal(size=channels).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 3, channels).astype("float32"))
    return linear, bn


def fused_from(linear, bn, input_shape, bits=NO_QUANT_BITS, **kwargs):
    settings = dict(batchnorm={"epsilon": bn.epsilon, "momentum": bn.momentum},
                    use_bias=linear.use_bias, weight_bits=bits, **kwargs)
    if isinstance(linear, keras.layers.DepthwiseConv2D):
        fused = QuantDepthwiseConv2D(3, padding="same", depth_multiplier=2, **settings)
    elif isinstance(linear, keras.layers.Conv1D):
        fused = QuantConv1D(6, 3, padding="causal", **settings)
    elif isinstance(linear, keras.layers.Conv2DTranspose):
        fused = QuantConv2DTranspose(6, 3, strides=2, padding="same", **settings)
    elif isinstance(linear, keras.layers.Conv2D):
        fused = QuantConv2D(6, 3, padding="same", **settings)
    else:
        fused = QuantDense(5, **settings)
    fused.build(input_shape)
    fused.load_float_weights(linear, bn)
    return fused


KINDS = ("conv", "depthwise", "dense", "conv1d", "transpose")
CASES = [(kind, bias) for kind in KINDS for bias in (False, True)]
SHAPES = {"conv": (4, 7, 7, 3), "depthwise": (4, 7, 7, 3), "dense": (8, 12), "conv1d": (4, 9, 3),
          "transpose": (4, 5, 5, 3)}


def inputs_for(kind):
    return tf.constant(np.random.default_rng(5).normal(size=SHAPES[kind]).astype("float32"))


def loss_weights(shape):
    return tf.constant(np.random.default_rng(7).normal(size=shape).astype("float32"))


@pytest.mark.parametrize("bn_fold", ["exact", "approximate"])
@pytest.mark.parametrize("kind,use_bias", CASES)
def test_before_freeze_matches_batchnorm_training_in_value_and_gradient(kind, use_bias, bn_fold):
    # With quantization off, the approximate fold's statistics (of the folded conv's output
    # rescaled by sigma_mv / gamma) are those of the unfolded conv, so both modes match.
    x = inputs_for(kind)
    linear, bn = float_pair(kind, use_bias, x.shape)
    fused = fused_from(linear, bn, x.shape, bn_fold=bn_fold)
    with tf.GradientTape(persistent=True) as tape:
        expected = bn(linear(x), training=True)
        actual = fused(x, training=True)
        r = loss_weights(expected.shape)
        loss_expected = tf.reduce_sum(expected * r)
        loss_actual = tf.reduce_sum(actual * r)
    np.testing.assert_allclose(actual, expected, atol=2e-3, rtol=1e-3)
    pairs = [(linear.kernel, fused.kernel), (bn.gamma, fused.gamma), (bn.beta, fused.beta)]
    for float_var, fused_var in pairs:
        g_expected = tape.gradient(loss_expected, float_var)
        g_actual = tape.gradient(loss_actual, fused_var)
        np.testing.assert_allclose(g_actual, g_expected, atol=2e-3, rtol=2e-3)
    # Moving statistics update exactly as Keras BatchNormalization's.
    np.testing.assert_allclose(fused.moving_mean, bn.moving_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, bn.moving_variance, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,use_bias", CASES)
def test_inference_matches_batchnorm_inference(kind, use_bias):
    x = inputs_for(kind)
    linear, bn = float_pair(kind, use_bias, x.shape)
    fused = fused_from(linear, bn, x.shape)
    np.testing.assert_allclose(fused(x, training=False), bn(linear(x), training=False),
                               atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("bn_fold", ["exact", "approximate"])
@pytest.mark.parametrize("kind,use_bias", CASES)
def test_after_freeze_training_equals_inference_and_stats_stop(kind, use_bias, bn_fold):
    x = inputs_for(kind)
    linear, bn = float_pair(kind, use_bias, x.shape)
    fused = fused_from(linear, bn, x.shape, bits=8, bn_freeze_delay=2, bn_fold=bn_fold)
    fused(x, training=True)
    fused(x, training=True)
    assert fused.bn_frozen()
    mean_before = fused.moving_mean.numpy().copy()
    var_before = fused.moving_variance.numpy().copy()
    trained = fused(x, training=True).numpy()
    inferred = fused(x, training=False).numpy()
    np.testing.assert_array_equal(trained, inferred)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), mean_before)
    np.testing.assert_array_equal(fused.moving_variance.numpy(), var_before)


def test_moving_stats_update_until_the_freeze_step():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", False, x.shape)
    fused = fused_from(linear, bn, x.shape, bn_freeze_delay=2)
    history = []
    for _ in range(4):
        fused(x, training=True)
        history.append(fused.moving_mean.numpy().copy())
    assert not np.array_equal(history[0], history[1])  # step 1 < 2: still updating
    np.testing.assert_array_equal(history[1], history[2])  # frozen from step 2 on
    np.testing.assert_array_equal(history[2], history[3])


def _convolutions_per_training_step(fused, x):
    graph = tf.function(lambda v: fused(v, training=True)).get_concrete_function(x).graph
    return sum(op.type == "Conv2D" for op in graph.get_operations())


def test_approximate_fold_runs_one_convolution_per_step_and_stays_close_at_8_bits():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", True, x.shape)
    exact = fused_from(linear, bn, x.shape, bits=8)
    approximate = fused_from(linear, bn, x.shape, bits=8, bn_fold="approximate")
    assert _convolutions_per_training_step(exact, x) == 2
    assert _convolutions_per_training_step(approximate, x) == 1
    # The statistics come from the 8-bit weights instead of the float ones: close, not equal.
    exact_out, approx_out = exact(x, training=True), approximate(x, training=True)
    assert not np.array_equal(exact_out, approx_out)
    np.testing.assert_allclose(approx_out, exact_out, atol=0.05)
    np.testing.assert_allclose(approximate.moving_mean, exact.moving_mean, atol=0.01)


def test_approximate_fold_keeps_moving_stats_of_a_zero_gamma_channel():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", False, x.shape)
    bn.gamma.assign(np.array([0.0, 1, 1, 1, 1, 1], "float32"))
    fused = fused_from(linear, bn, x.shape, bits=8, bn_fold="approximate")
    mean_before, var_before = fused.moving_mean.numpy()[0], fused.moving_variance.numpy()[0]
    outputs = fused(x, training=True).numpy()
    assert np.isfinite(outputs).all() and np.isfinite(fused.moving_variance.numpy()).all()
    assert fused.moving_mean.numpy()[0] == mean_before
    assert fused.moving_variance.numpy()[0] == var_before
    np.testing.assert_allclose(outputs[..., 0], fused.beta.numpy()[0], atol=1e-6)


def test_bn_fold_is_validated_and_reaches_the_fused_layers():
    with pytest.raises(ValueError, match="bn_fold='fast'"):
        tfqat.QuantConfig(bn_fold="fast")
    with pytest.raises(ValueError, match="bn_fold"):
        QuantConv2D(4, 3, batchnorm={}, bn_fold="fast")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    qat = tfqat.quantize_model(keras.Model(inputs, outputs),
                               tfqat.QuantConfig(bn_fold="approximate"))
    fused = [layer for layer in qat.layers if isinstance(layer, QuantConv2D)]
    assert [layer.bn_fold for layer in fused] == ["approximate"]
    assert QuantConv2D.from_config(fused[0].get_config()).bn_fold == "approximate"


def test_frozen_gradients_equal_inference_form_gradients():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", True, x.shape)
    fused = fused_from(linear, bn, x.shape, bits=8, bn_freeze_delay=0)
    r = loss_weights((4, 7, 7, 6))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fused(x, training=True) * r)
    g_train = tape.gradient(loss, [fused.kernel, fused.gamma, fused.beta])
    # The same loss through the inference form, built by hand.
    with tf.GradientTape() as tape:
        sigma = tf.sqrt(fused.moving_variance + 1e-3)
        w = fused.kernel * (fused.gamma / sigma)
        m = tf.reduce_max(tf.abs(w), axis=[0, 1, 2])
        wq = tf.quantization.fake_quant_with_min_max_vars_per_channel(w, -m, m, narrow_range=True)
        y = tf.nn.conv2d(x, wq, 1, "SAME") + fused.beta + fused.gamma * (fused.bias - fused.moving_mean) / sigma
        loss_ref = tf.reduce_sum(y * r)
    g_ref = tape.gradient(loss_ref, [fused.kernel, fused.gamma, fused.beta])
    for a, b in zip(g_train, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_weights_use_moving_sigma_so_they_do_not_jump_between_batches():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", False, x.shape)
    fused = fused_from(linear, bn, x.shape, bits=8)
    expected = linear.kernel * bn.gamma / tf.sqrt(bn.moving_variance + bn.epsilon)
    np.testing.assert_allclose(fused.folded_kernel_view(), expected, rtol=1e-6)


def test_correction_tensors_are_named_in_the_graph():
    x = inputs_for("conv")
    linear, bn = float_pair("conv", False, x.shape)
    fused = fused_from(linear, bn, x.shape, bn_freeze_delay=10)
    graph = tf.function(lambda t: fused(t, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape)).graph
    names = [op.name for op in graph.get_operations()]
    for function in graph._functions.values():  # tf.cond branches
        names += [op.name for op in function.graph.get_operations()]
    for wanted in ("correction_scale", "correction_recip", "correction_offset"):
        assert any(wanted in name for name in names), wanted


def test_standalone_batchnorm_matches_keras_batchnorm():
    x = tf.constant(np.random.default_rng(2).normal(2, 3, size=(6, 5, 5, 4)).astype("float32"))
    bn = keras.layers.BatchNormalization()
    bn.build(x.shape)
    bn.moving_variance.assign(np.full(4, 2.0, "float32"))
    layer = QuantBatchNormalization(batchnorm={"epsilon": bn.epsilon, "momentum": bn.momentum},
                                    weight_bits=NO_QUANT_BITS)
    layer.build(x.shape)
    layer.load_float_weights(None, bn)
    np.testing.assert_allclose(layer(x, training=False), bn(x, training=False), atol=1e-3)
    np.testing.assert_allclose(layer(x, training=True), bn(x, training=True), atol=1e-3)
    np.testing.assert_allclose(layer.moving_mean, bn.moving_mean, atol=1e-5)


def test_standalone_batchnorm_on_2d_inputs():
    x = tf.constant(np.random.default_rng(2).normal(size=(6, 4)).astype("float32"))
    layer = QuantBatchNormalization(batchnorm={}, weight_bits=NO_QUANT_BITS)
    assert layer(x, training=True).shape == (6, 4)


def test_weight_quant_delay_uses_float_weights_first():
    x = inputs_for("dense")
    dense = QuantDense(5, weight_bits=2, quant_delay=1, use_bias=False)
    first = dense(x, training=True)
    np.testing.assert_allclose(first, tf.matmul(x, dense.kernel), rtol=1e-5, atol=1e-5)
    second = dense(x, training=True)
    assert not np.allclose(second, tf.matmul(x, dense.kernel), atol=1e-3)


def test_fused_relu6():
    conv = QuantConv2D(4, 1, activation="relu6", weight_bits=8)
    y = conv(tf.constant(np.random.default_rng(0).normal(0, 20, (1, 3, 3, 2)).astype("float32")))
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 6.0


def test_unfusable_activation_is_refused():
    with pytest.raises(ValueError, match="cannot be fused"):
        QuantConv2D(4, 1, activation="tanh")


def test_transposed_conv_refuses_per_channel_weights():
    with pytest.raises(ValueError, match="'up'.*per tensor"):
        QuantConv2DTranspose(4, 3, per_channel=True, name="up")


def test_conv1d_refuses_unknown_padding():
    with pytest.raises(ValueError, match="'c1'.*padding"):
        QuantConv1D(4, 3, padding="full", name="c1")


def test_rescaling_is_a_fixed_per_channel_affine_map():
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32"))
    layer = QuantRescaling(weight_bits=NO_QUANT_BITS)
    layer.build(x.shape)
    scale, offset = np.array([0.01, 0.02, 0.03], "float32"), np.array([-1.0, 0.0, 0.5], "float32")
    layer.load_affine(scale, offset)
    assert not layer.trainable_weights
    np.testing.assert_allclose(layer(x, training=True), x * scale + offset, rtol=1e-4, atol=1e-4)
    # 8-bit weights: one value per channel, so the symmetric quantization is exact.
    layer8 = QuantRescaling()
    layer8.build(x.shape)
    layer8.load_affine(scale, offset)
    np.testing.assert_allclose(layer8(x), x * scale + offset, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind,reference,gain", [
    ("hard_sigmoid", keras.activations.hard_sigmoid, 1 / 6),  # relu6(x + 3) / 6
    ("silu", keras.activations.silu, 8.0),  # x * sigmoid(x), |x| <= 8
    ("elu", keras.activations.elu, 1.0),  # max(x, exp(min(x, 0)) - 1)
])
def test_decomposed_activations_compute_the_keras_activation(kind, reference, gain):
    x = tf.constant(np.linspace(-8, 8, 301, dtype="float32"))
    # silu's inner sigmoid is int8 whatever `bits` says (TFLite's LOGISTIC output): up to half
    # an inner LSB (1/512) times |x|; its range also ends at 255/256, so x * 0.996 at large x.
    atol = 8 / 512 + 2e-4 if kind == "silu" else 2e-4
    np.testing.assert_allclose(QuantActivation(kind, bits=16)(x), reference(x), atol=atol,
                               rtol=4e-3)
    # At 8 bits the inner tensor is quantized to its fixed range, as in TFLite: the error is
    # at most one inner LSB times the gain from the inner tensor to the output.
    lo, hi = {"hard_sigmoid": (0, 6), "silu": (0, 1), "elu": (0, 1)}[kind]
    error = np.abs(QuantActivation(kind, bits=8)(x) - reference(x)).max()
    assert 0 < error <= (hi - lo) / 255 * gain


def test_decomposed_activation_refuses_other_kinds_and_follows_quant_delay():
    with pytest.raises(ValueError, match="'a'.*'tanh'"):
        QuantActivation("tanh", name="a")
    act = QuantActivation("elu", bits=2, quant_delay=1)
    x = tf.constant([[-3.0, -1.0, 0.5, 2.0]])
    np.testing.assert_allclose(act(x, training=True), keras.activations.elu(x), rtol=1e-6)
    assert not np.allclose(act(x, training=True), keras.activations.elu(x), atol=1e-2)


@pytest.mark.parametrize("layer", [
    QuantConv2D(4, 3, strides=2, padding="same", activation="relu", batchnorm={}, bn_freeze_delay=3),
    QuantConv1D(4, 3, strides=2, padding="causal", dilation_rate=2, batchnorm={}),
    QuantConv2DTranspose(4, 3, strides=2, padding="same", output_padding=1, activation="relu6"),
    QuantRescaling(),
    QuantDepthwiseConv2D(3, depth_multiplier=2, batchnorm={"center": False}),
    QuantDense(3, per_channel=False, quant_delay=2),
    QuantBatchNormalization(batchnorm={"scale": False}),
])
def test_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_decomposed_activation_config_round_trip():
    layer = QuantActivation("elu", bits=6, quant_delay=3)
    assert QuantActivation.from_config(layer.get_config()).get_config() == layer.get_config()


def _conv_bn_stack(bn_freeze_delay):
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3))
    x = inp
    for index in range(2):
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return tfqat.quantize_model(keras.Model(inp, out),
                                tfqat.QuantConfig(bn_freeze_delay=bn_freeze_delay))


def _train_across_freeze(jit_compile, select=False, monkeypatch=None):
    """Weights after 6 steps of a QAT model whose folded BNs freeze after step 3."""
    import tfqat.nn.layers as layers_lib

    if monkeypatch is not None:
        monkeypatch.setattr(layers_lib, "SELECT_FREEZE", select)
    qat = _conv_bn_stack(bn_freeze_delay=3)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 8, 8, 3)).astype("float32"), np.arange(24) % 3
    qat.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                jit_compile=jit_compile)
    qat.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert all(layer.bn_frozen() for layer in qat.layers if hasattr(layer, "bn_frozen")
               and layer.batchnorm)
    return [w.numpy() for w in qat.weights]


def test_single_pass_freeze_switch_equals_the_conditional_one(monkeypatch):
    # The switch XLA gets (select per channel) against the tf.cond one, both without XLA.
    conditional = _train_across_freeze(False, select=False, monkeypatch=monkeypatch)
    single_pass = _train_across_freeze(False, select=True, monkeypatch=monkeypatch)
    for a, b in zip(conditional, single_pass):
        np.testing.assert_array_equal(a, b)


def test_jit_compile_matches_across_the_freeze():
    eager_graph = _train_across_freeze(False)
    xla = _train_across_freeze(True)
    # XLA sums in another order, which can move a fake-quant rounding by one step.
    for a, b in zip(eager_graph, xla):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_no_conditional_around_convolutions_under_xla():
    layer = QuantConv2D(4, 3, batchnorm={"epsilon": 1e-3, "momentum": 0.99}, bn_freeze_delay=5)
    layer.build((None, 8, 8, 3))
    spec = tf.TensorSpec([2, 8, 8, 3])

    def op_types(jit_compile):
        fn = tf.function(lambda t: layer(t, training=True), jit_compile=jit_compile)
        return {op.type for op in fn.get_concrete_function(spec).graph.get_operations()}

    assert op_types(False) & {"If", "StatelessIf"}  # without XLA the frozen step skips a conv
    assert not op_types(True) & {"If", "StatelessIf"}


# ---- the int32 bias at inference -------------------------------------------------------

def _bias_grid_model(kind):
    """input -> ZeroPadding2D -> conv / depthwise (or Flatten -> Dense), BN folded, with
    non-trivial biases."""
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)  # looked through to the input's quantizer
    if kind == "conv":
        x = keras.layers.Conv2D(8, 3, strides=2)(x)
    elif kind == "depthwise":
        x = keras.layers.DepthwiseConv2D(3, strides=2)(x)
    else:
        x = keras.layers.Dense(8)(keras.layers.Flatten()(x))
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        for variable in layer.weights:
            if variable.path.split("/")[-1] in ("bias", "beta", "kernel", "depthwise_kernel"):
                variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    return model


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_inference_bias_is_the_exported_int32_bias(kind, tmp_path):
    # The converter stores the bias as int32 on s_in * s_w[c]; inference adds that value
    # (a float bias moves 0.03-0.09 % of a conv's roundings against XNNPACK's: bench/
    # fidelity_sources.py), so the QAT model's int8 outputs are XNNPACK's value for value.
    from tfqat.diagnostics import evaluation
    from tfqat.export.reader import read_tflite

    qat = tfqat.quantize_model(_bias_grid_model(kind))
    x = np.random.default_rng(1).uniform(-1, 1, (256, 9, 9, 3)).astype("float32")
    tfqat.calibrate(qat, x)
    (layer,) = [layer for layer in qat.layers if isinstance(layer, tfqat.FusedQuantLayer)]
    tflite = tfqat.export_tflite(qat)
    (op,) = [op for op in read_tflite(tflite).ops if len(op.inputs) > 2]
    x_t, w_t, b_t = op.inputs[:3]
    exported = read_tflite(tflite).constants[b_t.index] * (x_t.scale * w_t.scales.astype(np.float64))
    inference = layer._on_bias_grid(layer.folded_bias(), layer.folded_kernel_view()).numpy()
    np.testing.assert_allclose(inference, exported, rtol=1e-6)
    assert np.abs(layer.folded_bias().numpy() - exported).max() > 1e-3 * x_t.scale * w_t.scales.min()
    lite = evaluation.run_tflite(tflite, x, kernels="xnnpack")
    on_grid = np.round(qat.predict(x, verbose=0).reshape(lite.raw.shape) / lite.scale)
    # Float32 ties aside (a value or two), the int8 outputs are XNNPACK's.
    assert np.mean(on_grid + lite.zero_point == lite.raw) >= 0.999
    # A loaded model links its layers again; export is unchanged by the link (the converter
    # gets the float bias and rounds it itself).
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert tfqat.export_tflite(loaded) == tflite
