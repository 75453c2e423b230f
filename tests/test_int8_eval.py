"""evaluate_int8: the .tflite's integer arithmetic as a batched TF graph, against LiteRT's kernels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.diagnostics.evaluation import run_tflite
from tfqat.diagnostics.int8_eval import (BIT_EXACT, EXACTNESS, Int8Model, UnsupportedOpError,
                                         evaluate_int8, quantize_multiplier)
from tfqat.export.reader import load_interpreter, quantize
from tiny_models import calibrate_quantizers, mixed_model, random_images, randomize_batchnorm

L = keras.layers


def _merges_model():
    """Padding, average pool, sigmoid, tanh, mul, sub, depthwise x2, concat, keep-dims mean."""
    inp = keras.Input((10, 10, 3), name="image")
    x = L.ZeroPadding2D(1)(inp)
    x = L.Conv2D(8, 3, strides=2, padding="same", name="c1")(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    a = L.AveragePooling2D(3, strides=1, padding="same")(x)
    b = L.Activation("tanh")(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x))
    c = L.Conv2D(8, 1, activation="sigmoid")(x)
    m = L.Multiply()([a, c])
    s = L.Subtract()([a, m])
    y = L.Conv2D(6, 3)(L.Concatenate()([s, b, m]))
    y = L.Flatten()(L.GlobalAveragePooling2D(keepdims=True)(y))
    out = L.Dense(5, activation="softmax")(L.Dense(12, activation="relu")(y))
    return keras.Model(inp, out, name="merges")


@pytest.fixture(scope="module")
def graphs():
    keras.utils.set_random_seed(0)
    mixed = tfqat.quantize_model(randomize_batchnorm(mixed_model()))
    calibrate_quantizers(mixed, random_images(32))
    merges = tfqat.quantize_model(randomize_batchnorm(_merges_model()))
    tfqat.calibrate(merges, np.random.default_rng(0).normal(0, 1, (64, 10, 10, 3)).astype("float32"))
    return {"mixed": (tfqat.export_tflite(mixed), random_images(48, seed=5)),
            "merges": (tfqat.export_tflite(merges), np.random.default_rng(5).normal(
                0, 1, (48, 10, 10, 3)).astype("float32"))}


def _interpreter_tensors(flatbuffer, x, kernels="reference"):
    program = Int8Model(flatbuffer)
    tensor = program.model.inputs[0]
    interpreter = load_interpreter(flatbuffer, kernels=kernels, preserve_all_tensors=True)
    interpreter.resize_tensor_input(tensor.index, (len(x), *tensor.shape[1:]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(tensor.index, quantize(x, tensor))
    interpreter.invoke()
    return program, interpreter


def _op_by_op_diffs(program, interpreter, batch):
    """{(op index, op name): max |ours - LiteRT|} with each op fed LiteRT's own input tensors."""
    diffs = {}
    for op, run in program.steps:
        inputs = [tf.constant(program.model.constants[t.index].astype(np.int64))
                  if t.index in program.model.constants
                  else tf.constant(interpreter.get_tensor(t.index).astype(np.int64))
                  for t in op.inputs]
        expected = interpreter.get_tensor(op.outputs[0].index)
        ours = run(inputs, batch).numpy().reshape(expected.shape)
        diffs[(op.index, op.name)] = int(np.abs(ours.astype(np.int64) - expected).max())
    return diffs


@pytest.fixture(scope="module")
def text_graph():
    """Embedding + pre-LN encoder block (causal attention, GELU MLP): the transformer ops."""
    from test_transformer_layers import text_block_model

    qat = tfqat.quantize_model(text_block_model(causal=True))
    tfqat.calibrate(qat, np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32"))
    return tfqat.export_tflite(qat), np.random.default_rng(4).integers(0, 20, (48, 6)).astype("int32")


@pytest.mark.parametrize("name", ["mixed", "merges", "text"])
def test_every_op_is_bit_exact_against_the_reference_kernels(graphs, text_graph, name):
    flatbuffer, x = text_graph if name == "text" else graphs[name]
    program, interpreter = _interpreter_tensors(flatbuffer, x)
    diffs = _op_by_op_diffs(program, interpreter, len(x))
    assert {n for _, n in diffs} <= set(EXACTNESS)
    # SOFTMAX follows the builtin kernel; the reference one differs by 1 LSB on rare near-halves.
    assert all(d == 0 for (_, n), d in diffs.items() if n != "SOFTMAX"), diffs
    assert all(d <= 1 for (_, n), d in diffs.items() if n == "SOFTMAX"), diffs
    builtin_program, builtin = _interpreter_tensors(flatbuffer, x, kernels="builtin")
    builtin_diffs = _op_by_op_diffs(builtin_program, builtin, len(x))
    assert all(d == 0 for (_, n), d in builtin_diffs.items() if n == "SOFTMAX"), builtin_diffs


def test_the_graphs_cover_the_ops_tfqat_exports(graphs, text_graph):
    ops = set()
    for flatbuffer, _ in [*graphs.values(), text_graph]:
        ops |= set(Int8Model(flatbuffer).ops_used)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL", "AVERAGE_POOL_2D", "MAX_POOL_2D",
            "MEAN", "RESHAPE", "CONCATENATION", "PAD", "QUANTIZE", "SOFTMAX", "LOGISTIC",
            "TANH", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE", "GATHER", "GELU",
            "RSQRT"} <= ops


def test_xnnpack_kernels_are_reproduced_on_a_conv_add_pool_mean_graph(graphs):
    flatbuffer, x = graphs["mixed"]
    lite = run_tflite(flatbuffer, x, kernels="xnnpack").raw
    np.testing.assert_array_equal(evaluate_int8(flatbuffer, x, kernels="xnnpack").outputs.raw, lite)
    with pytest.raises(ValueError, match="kernels='gpu'"):
        evaluate_int8(flatbuffer, x, kernels="gpu")


def test_a_wrong_multiplier_is_caught_by_the_op_by_op_check(graphs):
    """The check can fail: one conv with its bias shifted by one output LSB differs."""
    flatbuffer, x = graphs["mixed"]
    program, interpreter = _interpreter_tensors(flatbuffer, x)
    op, run = program.steps[0]
    program.steps[0] = (op, lambda inputs, batch: tf.clip_by_value(run(inputs, batch) + 1, -128, 127))
    diffs = _op_by_op_diffs(program, interpreter, len(x))
    assert diffs[(0, "CONV_2D")] == 1 and all(d == 0 for k, d in diffs.items() if k[0] != 0)


def test_quantize_multiplier_follows_tflite():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(2.0 ** -40) == (0, 0)  # flushed to zero below 2^-31
    assert quantize_multiplier(1 - 2.0 ** -33) == (1 << 30, 1)  # the mantissa rounds up to 2^31
    assert quantize_multiplier(0.0) == (0, 0)


@pytest.fixture(scope="module")
def trained_digits():
    from tfqat.training.data import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits(seed=0)
    inp = keras.Input(data.input_shape, name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    out = L.Dense(data.num_classes, activation="softmax")(L.Flatten()(x))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=3, batch_size=32, verbose=0)
    qat = tfqat.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    qat.fit(data.x_train, data.y_train, epochs=1, batch_size=32, verbose=0)
    return qat, data


@pytest.mark.slow  # trains a small CNN (about 30 s)
def test_top1_agrees_with_the_tflite_on_a_trained_model(trained_digits):
    qat, data = trained_digits
    flatbuffer = tfqat.export_tflite(qat)
    x = np.concatenate([data.x_train, data.x_test])  # all 1,797 digits
    y = np.concatenate([data.y_train, data.y_test])
    result = evaluate_int8(flatbuffer, x, labels=y, batch_size=512)
    assert result.num_examples == len(x) and result.outputs.raw.dtype == np.int8
    top1 = result.outputs.raw.argmax(-1)
    reference = run_tflite(flatbuffer, x, kernels="reference")
    xnnpack = run_tflite(flatbuffer, x, kernels="xnnpack")
    # Every op here is exact (SOFTMAX within 1 LSB of the reference kernel on rare rows).
    assert np.abs(result.outputs.raw.astype(int) - reference.raw).max() <= 1
    assert np.mean(top1 == reference.raw.argmax(-1)) >= 0.999
    # XNNPACK requantizes in float32 and rounds halves to even, so its outputs differ from the
    # reference kernels' by a few LSB on some rows (docs/design.md, "Integer evaluation");
    # kernels="xnnpack" does the same for the convolutions.
    assert np.mean(top1 == xnnpack.raw.argmax(-1)) >= 0.99
    like_xnnpack = evaluate_int8(flatbuffer, x, batch_size=512, kernels="xnnpack").outputs.raw
    assert np.mean(like_xnnpack.argmax(-1) == xnnpack.raw.argmax(-1)) >= 0.999
    assert result.accuracy == pytest.approx(np.mean(reference.raw.argmax(-1) == y))
    assert result.accuracy > 0.8  # a trained model, so agreement is not between constant outputs
    assert all(EXACTNESS[name] == BIT_EXACT for name in result.exactness if name != "SOFTMAX")
    assert "SOFTMAX" in result.exactness


def test_datasets_dicts_and_one_hot_labels_give_the_same_results(graphs):
    flatbuffer, x = graphs["mixed"]
    y = np.random.default_rng(0).integers(0, 4, len(x))
    by_arrays = evaluate_int8(flatbuffer, x, labels=y)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    by_dataset = evaluate_int8(flatbuffer, dataset)
    np.testing.assert_array_equal(by_dataset.outputs.raw, by_arrays.outputs.raw)
    assert by_dataset.accuracy == by_arrays.accuracy == pytest.approx(
        np.mean(by_arrays.outputs.raw.argmax(-1) == y))
    one_hot = evaluate_int8(flatbuffer, {"image": x}, labels=np.eye(4)[y])
    assert one_hot.accuracy == by_arrays.accuracy
    no_labels = evaluate_int8(flatbuffer, x, batch_size=7)
    assert no_labels.accuracy is None and no_labels.num_examples == len(x)
    np.testing.assert_array_equal(no_labels.outputs.raw, by_arrays.outputs.raw)
    np.testing.assert_allclose(
        no_labels.outputs.dequantized,
        (no_labels.outputs.raw.astype(np.float32) - no_labels.outputs.zero_point)
        * no_labels.outputs.scale, rtol=1e-6)


def test_two_inputs_in_keras_order():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(3)(L.Concatenate()([L.Dense(4, activation="relu")(a), L.Multiply()([a, b])]))
    qat = tfqat.quantize_model(keras.Model([a, b], out))
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(0, 1, (32, 4)).astype("float32"), rng.normal(0, 1, (32, 4)).astype("float32")
    tfqat.calibrate(qat, [xa, xb])
    by_list = evaluate_int8(qat, [xa, xb])  # a QAT model is exported on the way
    flatbuffer = tfqat.export_tflite(qat)
    by_dict = evaluate_int8(flatbuffer, {"b": xb, "a": xa})
    np.testing.assert_array_equal(by_list.outputs.raw, by_dict.outputs.raw)
    np.testing.assert_array_equal(by_list.outputs.raw,
                                  run_tflite(flatbuffer, [xa, xb], kernels="reference").raw)
    with pytest.raises(ValueError, match="2 inputs"):
        evaluate_int8(flatbuffer, [xa, xb, xa])


def test_reshapes_with_a_dynamic_batch_compute_their_shape_in_the_graph():
    """Keras Reshape and Flatten at the output become SHAPE, STRIDED_SLICE, PACK, RESHAPE."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    qat = tfqat.quantize_model(keras.Model(inp, L.Flatten()(L.Reshape((9, 16))(x))))
    tfqat.calibrate(qat, np.random.default_rng(0).normal(0, 1, (32, 6, 6, 3)).astype("float32"))
    flatbuffer = tfqat.export_tflite(qat)
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= set(Int8Model(flatbuffer).ops_used)
    x = np.random.default_rng(1).normal(0, 1, (37, 6, 6, 3)).astype("float32")
    ours = evaluate_int8(flatbuffer, x, batch_size=16).outputs.raw  # batches of 16 and 5
    np.testing.assert_array_equal(ours, run_tflite(flatbuffer, x, kernels="reference").raw)


def test_an_unsupported_op_is_named_before_anything_runs():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 2), name="image")
    x = L.Conv2D(2, 1)(inp)
    out = L.UpSampling2D(interpolation="bilinear")(x)
    qat = tfqat.quantize_model(keras.Model(inp, out))
    tfqat.calibrate(qat, random_images(8, shape=(4, 4, 2)))
    flatbuffer = tfqat.export_tflite(qat)
    with pytest.raises(UnsupportedOpError, match="RESIZE_BILINEAR is not supported"):
        evaluate_int8(flatbuffer, np.full((3, 4, 4, 2), np.nan, np.float32))  # never quantized


def test_refusals_name_the_problem(graphs):
    flatbuffer, x = graphs["mixed"]
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_int8(flatbuffer, x, batch_size=0)
    with pytest.raises(ValueError, match=r"takes \(N, 12, 12, 1\)"):
        evaluate_int8(flatbuffer, x[:, :8])
    with pytest.raises(ValueError, match="labels"):
        evaluate_int8(flatbuffer, x, labels=np.zeros(3))


@pytest.mark.parametrize("dtype", ["bool", "int32"])
def test_typed_attention_masks_are_bit_exact_op_by_op(dtype):
    # NOT_EQUAL (an int32 mask) and SELECT_V2 (the penalty it picks), op by op against the
    # reference kernels, each op fed LiteRT's own input tensors.
    from test_transformer_layers import typed_mask_inputs, typed_mask_model

    qat = tfqat.quantize_model(typed_mask_model(dtype, causal=True))
    tfqat.calibrate(qat, list(typed_mask_inputs(dtype, 32)))
    flatbuffer = tfqat.export_tflite(qat)
    x, mask = typed_mask_inputs(dtype, 24, seed=4)
    program = Int8Model(flatbuffer)
    interpreter = load_interpreter(flatbuffer, kernels="reference", preserve_all_tensors=True)
    for tensor, array in zip(program.model.inputs, (x, mask)):
        interpreter.resize_tensor_input(tensor.index, array.shape)
    interpreter.allocate_tensors()
    for tensor, array in zip(program.model.inputs, (x, mask)):
        interpreter.set_tensor(tensor.index, quantize(array, tensor))
    interpreter.invoke()
    diffs = {}
    for op, run in program.steps:
        inputs = [tf.constant(program.model.constants[t.index]
                              if t.index in program.model.constants
                              else interpreter.get_tensor(t.index)) for t in op.inputs]
        inputs = [tf.cast(v, tf.int64) if v.dtype.is_integer else v for v in inputs]
        expected = interpreter.get_tensor(op.outputs[0].index)
        ours = run(inputs, len(x)).numpy().reshape(expected.shape)
        diffs[(op.index, op.name)] = int(np.abs(ours.astype(np.int64) - expected).max())
    names = {n for _, n in diffs}
    assert {"SELECT_V2", *(("NOT_EQUAL",) if dtype == "int32" else ())} <= names, diffs
    assert all(d == 0 for (_, n), d in diffs.items() if n != "SOFTMAX"), diffs
    assert all(d <= 1 for (_, n), d in diffs.items() if n == "SOFTMAX"), diffs
    result = evaluate_int8(flatbuffer, [x, mask])
    assert result.exactness["SELECT_V2"] == BIT_EXACT and result.outputs.raw.shape == (24, 5)
