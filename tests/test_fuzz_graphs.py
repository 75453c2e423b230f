"""Random Keras graphs (tests/graph_fuzz.py) through the whole tfqat pipeline.

For each drawn case: quantize_model returns a QAT model or raises
UnsupportedLayerError naming a layer; the QAT model fits a few steps (some
crossing bn_freeze_delay), calibrates, saves and loads with the same
predictions, and exports integer-only (or is refused before conversion, for
activation_bits < 8, naming the layers); the LiteRT reference kernels and
XNNPACK both run it; every quantizer agrees with the .tflite within 1 LSB op
by op; the QAT model's outputs lie on the .tflite's output grid.

The sequence profile (graph_fuzz.sequence_cases: transformer, recurrent, 1-D and
custom registered layers) is checked by the same run_case, with int32 token ids
where the graph starts with an Embedding.

Derandomized (fixed seed, no example database), so CI reruns the same graphs.
The fast profile runs in the default suite; the long one (TFQAT_FUZZ_EXAMPLES,
500 by default) is marked slow and split into chunks of its own seeds, so that
pytest-xdist spreads them over CI's workers.
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from hypothesis import HealthCheck, given, seed, settings

import tfqat
from tfqat.diagnostics.evaluation import quantize_input
from tfqat.export.reader import load_interpreter
import graph_fuzz

# A graph costs 3-6 s on one core (the converter's share is 2-4 s), so the default suite runs
# a few, and CI's slow suite the long profile: 500 graphs in 5 chunks of 100 (each about
# 8 minutes on one core; pytest-xdist runs two at a time on CI's 2 workers).
FAST_EXAMPLES = int(os.environ.get("TFQAT_FUZZ_FAST_EXAMPLES", "10"))
LONG_EXAMPLES = int(os.environ.get("TFQAT_FUZZ_EXAMPLES", "500"))
LONG_CHUNKS = 5
LONG_SEED = 1400  # chunk i draws its graphs from hypothesis seed LONG_SEED + i
# XNNPACK and the reference kernels round some ops differently (1 LSB an op), and the
# differences add up over the layers: at most 4 LSB, or 1 LSB per requantizing op of the
# .tflite (a chain of six per-tensor convs and a dense head differed by 5 LSB).
# The sequence profile (graph_fuzz.sequence_cases: transformer, recurrent, 1-D and custom
# layers): a few graphs in the default suite, 80 in 2 chunks in the slow one.
SEQ_FAST_EXAMPLES = int(os.environ.get("TFQAT_FUZZ_SEQ_FAST_EXAMPLES", "7"))
# A seed whose 7 graphs hold no LSTM: the converter now and then leaves an LSTM step's
# SPLIT float (open, issue 11; see test_recurrent), which would make the default suite flaky.
# The long profile draws LSTMs.
SEQ_FAST_SEED = 2037
SEQ_LONG_EXAMPLES = int(os.environ.get("TFQAT_FUZZ_SEQ_EXAMPLES", "80"))
SEQ_LONG_CHUNKS = 2
SEQ_LONG_SEED = 2400
XNNPACK_MAX_LSB = 4
SCALE_KEEPING_OPS = ("RESHAPE", "PAD", "MAX_POOL_2D", "TRANSPOSE", "STRIDED_SLICE", "GATHER")


def _layer_names(model):
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= _layer_names(layer)
    return names


def run_case(case, stats=None):
    """Runs one case through the pipeline and checks every property.

    Returns "refused" (a documented refusal) or "exported"; raises AssertionError on a
    property violation (op_fidelity leaving a tensor unmatched is one).
    """
    model = graph_fuzz.build_model(case)
    rng = np.random.default_rng(case.seed)
    if case.tokens:
        x = rng.integers(0, case.tokens, (24, *case.input_shape)).astype("int32")
    else:
        x = rng.uniform(0, 1, (24, *case.input_shape)).astype("float32")
    # The sequence profile's graphs hold the two custom layers (graph_fuzz.FuzzScale, FuzzDense).
    registry = graph_fuzz.custom_registry() if case.profile == "sequence" else None
    try:
        qat = tfqat.quantize_model(model, case.quant_config(), registry=registry)
    except tfqat.UnsupportedLayerError as err:
        named = [n for n in _layer_names(model) if f"'{n}'" in str(err)]
        assert named, f"refusal names no layer of the model: {err}"
        return "refused"
    # Eager: tracing a train function costs more than the few steps run.
    qat.compile(keras.optimizers.SGD(1e-3), "mse", run_eagerly=True)
    y = rng.normal(0, 1, (len(x), *qat.output_shape[1:])).astype("float32")
    steps = case.fit_steps
    qat.fit(x[:8 * steps], y[:8 * steps], batch_size=8, epochs=1, verbose=0, shuffle=False)
    if case.calibration is not None:
        tfqat.calibrate(qat, x, method=case.calibration)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qat.keras")
        qat.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x[:8])), np.asarray(qat(x[:8])))
    try:
        flatbuffer = tfqat.export_tflite(loaded)
    except tfqat.NotIntegerOnlyError:
        raise
    except tfqat.ExportError as err:
        # A deliberate refusal comes before conversion and names the layers.
        if case.config["activation_bits"] < 8 and "activation_bits" in str(err):
            named = [n for n in _layer_names(loaded) if n in str(err)]
            assert named, err
            return "refused"
        raise
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    input_dtype = "int32" if case.tokens else "int8"
    assert [t.dtype for t in report.inputs + report.outputs] == [input_dtype, "int8"], str(report)

    reference = load_interpreter(flatbuffer)
    detail = reference.get_input_details()[0]
    reference.resize_tensor_input(detail["index"], x.shape)
    reference.allocate_tensors()
    q_in = quantize_input(x, detail)
    reference.set_tensor(detail["index"], q_in)
    reference.invoke()
    out_detail = reference.get_output_details()[0]
    q_ref = reference.get_tensor(out_detail["index"]).astype(np.int32)

    # XNNPACK (the default delegate) must prepare and run the same model.
    xnnpack = Interpreter(model_content=bytes(flatbuffer))
    xnnpack.resize_tensor_input(xnnpack.get_input_details()[0]["index"], x.shape)
    xnnpack.allocate_tensors()
    xnnpack.set_tensor(xnnpack.get_input_details()[0]["index"], q_in)
    xnnpack.invoke()
    q_xnn = xnnpack.get_tensor(xnnpack.get_output_details()[0]["index"]).astype(np.int32)
    xnn_diff = int(np.abs(q_xnn - q_ref).max())
    requantizing = sum(op.name not in SCALE_KEEPING_OPS for op in report.ops)
    assert xnn_diff <= max(XNNPACK_MAX_LSB, requantizing), \
        f"XNNPACK output {xnn_diff} LSB from the reference kernels ({requantizing} ops)"

    # The QAT model, fed exactly the dequantized int8 input, outputs values on the .tflite's
    # output grid.
    in_scale, in_zp = detail["quantization"]
    x_grid = q_in if case.tokens else ((q_in.astype(np.float64) - in_zp) * in_scale).astype(
        "float32")
    out_scale, out_zp = out_detail["quantization"]
    levels = np.asarray(loaded(x_grid)).astype(np.float64) / out_scale + out_zp
    off_grid = np.abs(levels - np.round(levels)).max()
    assert off_grid < 0.01, f"QAT output {off_grid:.3f} LSB off the .tflite output grid"
    assert levels.min() > -128.5 and levels.max() < 127.5, (levels.min(), levels.max())

    fidelity = tfqat.op_fidelity(loaded, flatbuffer, x[:8])
    if stats is not None:
        stats["end_to_end_lsb"].append(float(np.abs(np.round(levels) - q_ref).max()))
    assert fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)
    assert not fidelity.unmatched, str(fidelity)
    return "exported"


def _check(case, outcomes, stats=None):
    outcomes.append(run_case(case, stats))


def _run_profile(max_examples, hypothesis_seed=None, strategy=None):
    outcomes = []
    stats = {"end_to_end_lsb": []}

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy if strategy is not None else graph_fuzz.cases())
    def check(case):
        try:
            _check(case, outcomes, stats)
        except Exception as err:
            raise AssertionError(f"{type(err).__name__}: {err}\n{graph_fuzz.describe(case)}") \
                from err

    if hypothesis_seed is not None:  # else derandomized from the test's own source
        check = seed(hypothesis_seed)(check)
    check()
    counts = {kind: outcomes.count(kind) for kind in set(outcomes)}
    print(f"fuzzed {len(outcomes)} graphs: {counts}; end-to-end max "
          f"{max(stats['end_to_end_lsb'], default=0):.0f} LSB")
    assert counts.get("exported", 0) >= len(outcomes) // 2, counts
    return counts


def test_random_graphs_fast_profile():
    _run_profile(FAST_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(LONG_CHUNKS))
def test_random_graphs_long_profile(chunk):
    _run_profile(-(-LONG_EXAMPLES // LONG_CHUNKS), hypothesis_seed=LONG_SEED + chunk)


def test_random_sequence_graphs_fast_profile():
    _run_profile(SEQ_FAST_EXAMPLES, hypothesis_seed=SEQ_FAST_SEED,
                 strategy=graph_fuzz.sequence_cases())


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SEQ_LONG_CHUNKS))
def test_random_sequence_graphs_long_profile(chunk):
    _run_profile(-(-SEQ_LONG_EXAMPLES // SEQ_LONG_CHUNKS), hypothesis_seed=SEQ_LONG_SEED + chunk,
                 strategy=graph_fuzz.sequence_cases())


@pytest.mark.parametrize("per_channel", [False, True])
def test_shrunk_global_average_pool_of_a_pooled_tensor_exports_and_matches_op_by_op(per_channel):
    # Found by the long profile (hypothesis seed 1403): GAP -> GAP -> Flatten -> Dense failed
    # to convert ("'tfl.reshape' op quantization parameters violate the same scale
    # constraint": the converter merged the two MEANs, whose trained scales differed in the
    # 5th digit); per-channel, the merged MEAN left a quantizer unmatched op by op. The
    # second pool averages one position and is now a scale-keeping Reshape (issue 14).
    gaps = (graph_fuzz.OpSpec("gap", (0,), ()), graph_fuzz.OpSpec("gap", (1,), ()))
    case = graph_fuzz.FuzzCase(
        (6, 6, 3), gaps, "flatten_dense", False,
        dict(per_channel=per_channel, weight_bits=8, activation_bits=8, quant_delay=0,
             bn_freeze_delay=5), fit_steps=3, calibration=None, seed=1)
    assert run_case(case) == "exported"
    qat = tfqat.quantize_model(graph_fuzz.build_model(case))
    assert type(qat.get_layer("gap1")) is keras.layers.Reshape
    assert "gap1_fq" not in {layer.name for layer in qat.layers}


@pytest.mark.parametrize("second", [
    lambda: keras.layers.GlobalAveragePooling2D(name="pool2"),
    lambda: keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool2"),
    lambda: keras.layers.GlobalMaxPooling2D(name="pool2"),
    lambda: keras.layers.GlobalMaxPooling2D(keepdims=True, name="pool2"),
], ids=["gap", "gap_keepdims", "gmp", "gmp_keepdims"])
def test_global_pool_of_a_one_position_tensor_keeps_its_scale(second):
    # Each of these converted before as well when calibrated (the failure above needed the
    # trained ranges); a pool of one position is an identity either way, now a Reshape.
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 5, 3), name="x")
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool1")(inp)
    x = second()(x)
    out = keras.layers.Dense(3, name="head")(keras.layers.Flatten(name="flat")(x))
    qat = tfqat.quantize_model(keras.Model(inp, out))
    assert type(qat.get_layer("pool2")) is keras.layers.Reshape
    x = np.random.default_rng(1).uniform(0, 1, (16, 5, 5, 3)).astype("float32")
    ranges = tfqat.calibrate(qat, x)
    assert "pool1_fq" in ranges and "pool2_fq" not in ranges  # pool2 keeps pool1's scale
    flatbuffer = tfqat.export_tflite(qat)
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert report.op_histogram["MEAN"] == 1 and "REDUCE_MAX" not in report.op_histogram, \
        dict(report.op_histogram)
    fidelity = tfqat.op_fidelity(qat, flatbuffer, x[:8])
    assert not fidelity.unmatched and fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)


def test_shrunk_max_pool_relu6_per_tensor_6_bit_dense_matches_op_by_op():
    # Found by the fuzzer: the per-tensor 6-bit Dense head was 2 LSB off the .tflite op by op
    # (mean 1.25 LSB); its weights now go to the converter as int8 on the 6-bit grid.
    pool = graph_fuzz.OpSpec("maxpool", (0,), (("pool_size", 3), ("relu_after", "relu6"),
                                               ("strides", 1)))
    case = graph_fuzz.FuzzCase(
        (8, 8, 3), (pool,), "flatten_dense", False,
        dict(per_channel=False, weight_bits=6, activation_bits=8, quant_delay=3,
             bn_freeze_delay=5), fit_steps=1, calibration="minmax", seed=2)
    run_case(case)


def test_shrunk_squeeze_excite_per_channel_6_bit_conv_matches_op_by_op():
    # Found by the fuzzer (long profile, seed 1211): the squeeze-excite expand conv was 2 LSB
    # off op by op, as the converter re-gridded its 6-bit per-channel weights to 127 levels;
    # they now go to the converter as int8 on the 6-bit grid.
    depthwise = graph_fuzz.OpSpec("dwconv", (0,), (
        ("activation", None), ("bn", False), ("depth_multiplier", 1), ("kernel_size", 1),
        ("use_bias", False)))
    squeeze_excite = graph_fuzz.OpSpec("se", (1,), (("squeeze", 4),))
    case = graph_fuzz.FuzzCase(
        (8, 8, 3), (depthwise, squeeze_excite), "none", True,
        dict(per_channel=True, weight_bits=6, activation_bits=8, quant_delay=0,
             bn_freeze_delay=None), fit_steps=1, calibration="minmax", seed=1211)
    run_case(case)


def test_shrunk_chain_of_per_tensor_convs_runs_on_xnnpack_within_one_lsb_an_op():
    # Found by the fuzzer (long profile, seed 1400): six 3x3 convs and a Dense head, per-tensor
    # weights; XNNPACK's output was 5 LSB from the reference kernels' (1-LSB rounding
    # differences adding up), over the old fixed bound of 4.
    conv = graph_fuzz.OpSpec("conv", (0,), (
        ("activation", None), ("bn", False), ("filters", 4), ("kernel_size", 3), ("strides", 1),
        ("use_bias", False)))
    ops = tuple(dataclasses.replace(conv, inputs=(i,)) for i in range(6))
    case = graph_fuzz.FuzzCase(
        (4, 4, 3), ops, "flatten_dense", False,
        dict(per_channel=False, weight_bits=8, activation_bits=8, quant_delay=0,
             bn_freeze_delay=None), fit_steps=3, calibration="minmax", seed=0)
    run_case(case)


def _sequence_case(input_shape, ops, config, head="none", tokens=0, seed=0, **kwargs):
    config = dict(dict(per_channel=False, weight_bits=8, activation_bits=8, quant_delay=0,
                       bn_freeze_delay=None), **config)
    settings = {"sequential": True, "fit_steps": 1, "calibration": "minmax", **kwargs}
    return graph_fuzz.FuzzCase(input_shape, tuple(ops), head, config=config, seed=seed,
                               profile="sequence", tokens=tokens, **settings)


def test_shrunk_per_tensor_dense_on_a_sequence_exports_integer_only():
    # Found by the sequence profile: Dense(gelu) on a (5, 3) input with per-tensor 6-bit
    # weights exported a float FULLY_CONNECTED (and its bias ADD): the converter did not fuse
    # tensordot's 3-D form. QuantDense now runs it as a 2-D matmul between reshapes.
    dense = graph_fuzz.OpSpec("dense", (0,), (("activation", "gelu"), ("units", 4),
                                              ("use_bias", True)))
    case = _sequence_case((5, 3), (dense, graph_fuzz.OpSpec("flatten", (1,), ())),
                          dict(weight_bits=6, bn_freeze_delay=2), calibration="percentile",
                          seed=58)
    assert run_case(case) == "exported"


def test_shrunk_4_bit_embedding_table_exports_as_an_int8_gather():
    # Found by the sequence profile (seed 2400): a 4-bit Embedding (and position table) failed
    # to convert ("'tfl.gather' op operand #0 must be ... but got ... i4<-7:7>"): GATHER has
    # no int4 table. The 4-bit values now go to the converter as int8 on the 4-bit grid.
    embedding = graph_fuzz.OpSpec("embedding", (0,), (("dim", 4), ("positions", True)))
    attention = graph_fuzz.OpSpec("mha", (1,), (
        ("causal", True), ("key_dim", 4), ("num_heads", 1), ("use_bias", True),
        ("value_dim", 3)))
    case = _sequence_case((4,), (embedding, attention), dict(weight_bits=4), head="gap_dense",
                          tokens=12, fit_steps=3, calibration="percentile", seed=20391)
    assert run_case(case) == "exported"
    qat = tfqat.quantize_model(graph_fuzz.build_model(case), case.quant_config())
    table = qat.get_layer("embedding0").quantized_table().numpy()
    step = np.abs(table).max() / 7  # the 4-bit grid, whatever the container
    np.testing.assert_allclose(table / step, np.round(table / step), atol=1e-4)


@pytest.mark.xfail(strict=True, raises=tfqat.NotIntegerOnlyError, reason=(
    "open: a registered user layer computing x @ kernel + bias on a (batch, T, F) input "
    "exports a float FULLY_CONNECTED + RESHAPE + bias ADD (the converter does not fuse the "
    "bias after TF's 3-D matmul, so the matmul's output has no int8 scale); QuantWrapper "
    "cannot reshape inside a user's call. The fuzzer draws the custom dense on vectors only."))
def test_shrunk_custom_matmul_layer_on_a_sequence_exports_integer_only():
    custom = graph_fuzz.OpSpec("cdense", (0,), (("units", 4),))
    case = _sequence_case((4, 3), (custom,), {}, sequential=False, seed=1)
    run_case(case)


def test_shrunk_4_bit_layer_norm_offset_on_tokens_converts():
    # Found by the sequence profile (seed 2400): LayerNormalization(scale=False) on a 4-bit
    # Embedding failed to convert ("'tfl.add' op operand #1 must be ..."): its 4-bit beta was
    # an int4 constant of the ADD. Norm weights below 8 bits now go as int8 on their grid.
    embedding = graph_fuzz.OpSpec("embedding", (0,), (("dim", 4), ("positions", False)))
    norm = graph_fuzz.OpSpec("ln", (1,), (("axis", -1), ("center", True), ("scale", False)))
    case = _sequence_case((6,), (embedding, norm), dict(per_channel=True, weight_bits=4,
                                                        quant_delay=3, bn_freeze_delay=2),
                          tokens=12, calibration="entropy", seed=55738)
    assert run_case(case) == "exported"


def test_shrunk_attention_then_relu_matches_op_by_op():
    # Found by the sequence profile (seed 2400): 2 LSB at act2_fq, at 8 and 5 weight bits,
    # on token or float inputs alike. The converter fuses the RELU into the attention's
    # output FULLY_CONNECTED; the rule now takes the ReLU in, rounding once after it.
    dense = graph_fuzz.OpSpec("dense", (0,), (("activation", None), ("units", 8),
                                              ("use_bias", True)))
    cross = graph_fuzz.OpSpec("cross", (1, 1), (
        ("causal", True), ("key_dim", 4), ("num_heads", 1), ("use_bias", False),
        ("value_dim", 3)))
    relu = graph_fuzz.OpSpec("act", (2,), (("activation", "relu"),))
    case = _sequence_case((6, 3), (dense, cross, relu), dict(per_channel=True, quant_delay=3),
                          head="flatten_dense", sequential=False, fit_steps=3, seed=8349)
    assert run_case(case) == "exported"


def test_shrunk_custom_int8_layer_then_relu_matches_op_by_op():
    # Found by the sequence profile (seed 2401): the converter fuses the RELU into the
    # layer's MUL, rounding once; 2 LSB at the ReLU until the layer was registered with
    # fuses_relu=True, which takes the ReLU into the rewrite the same way.
    ops = (graph_fuzz.OpSpec("scale", (0,), ()),
           graph_fuzz.OpSpec("act", (1,), (("activation", "relu"),)))
    case = _sequence_case((6, 3), ops, dict(per_channel=True, weight_bits=7, quant_delay=1,
                                            bn_freeze_delay=2),
                          head="dense_softmax", fit_steps=3, calibration="entropy", seed=1369)
    assert run_case(case) == "exported"


def test_shrunk_embedding_then_flatten_alone_exports():
    # Found by the sequence profile (seed 2401): the QAT model holds no quantizer layer (the
    # GATHER and RESHAPE keep the table's scale), and export refused it as "a float model".
    ops = (graph_fuzz.OpSpec("embedding", (0,), (("dim", 8), ("positions", False))),
           graph_fuzz.OpSpec("flatten", (1,), ()))
    case = _sequence_case((4,), ops, dict(bn_freeze_delay=0), tokens=12, calibration=None,
                          seed=10293)
    assert run_case(case) == "exported"


def test_shrunk_dropout_between_a_mul_layer_and_its_relu_matches_op_by_op():
    # Found by the sequence long profile (seed 2401): registered MUL layer -> Dropout ->
    # ReLU was 3 LSB off at the ReLU. The converter drops the Dropout and fuses the RELU into
    # the MUL (rounding once); quantize_model now moves the Dropout after the ReLU (they
    # commute), so the rule takes the ReLU in too.
    ops = (graph_fuzz.OpSpec("scale", (0,), ()), graph_fuzz.OpSpec("dropout", (1,), ()),
           graph_fuzz.OpSpec("act", (2,), (("activation", "relu"),)))
    case = _sequence_case((4, 4), ops, dict(per_channel=True), head="gap_dense",
                          sequential=False, fit_steps=3, seed=0)
    assert run_case(case) == "exported"
    qat = tfqat.quantize_model(graph_fuzz.build_model(case), case.quant_config(),
                               registry=graph_fuzz.custom_registry())
    names = [layer.name for layer in qat.layers]
    assert "scale0_fq" not in names and names.index("act2") < names.index("dropout1"), names


def test_dropout_before_a_conv_relu_moves_after_it_and_matches_op_by_op():
    # The same for the built-in rules: Conv2D -> Dropout -> ReLU fuses as Conv2D + ReLU.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Dropout(0.3, name="drop")(keras.layers.Conv2D(4, 3, name="conv")(inp))
    x = keras.layers.ReLU(name="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x)))
    qat = tfqat.quantize_model(model)
    names = [layer.name for layer in qat.layers]
    assert "relu" not in names and names.index("conv") < names.index("drop"), names  # fused
    x_data = np.random.default_rng(0).uniform(0, 1, (32, 6, 6, 3)).astype("float32")
    tfqat.calibrate(qat, x_data)
    fidelity = tfqat.op_fidelity(qat, tfqat.export_tflite(qat), x_data[:8])
    assert not fidelity.unmatched and fidelity.max_diff_lsb <= 1.0 + 1e-3, str(fidelity)


def survey(max_examples, log=None, hypothesis_seed=None, strategy=None):
    """Runs `max_examples` cases without stopping or shrinking; returns (case, outcome) pairs,
    outcome "refused", "exported" or the failure's first line.

    `python tests/test_fuzz_graphs.py 100` prints the failures grouped by message;
    `python tests/test_fuzz_graphs.py 100 1400` the same for the long profile's first chunk;
    `python tests/test_fuzz_graphs.py 40 2400 sequence` the sequence long profile's first.
    """
    results = []

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @given(strategy if strategy is not None else graph_fuzz.cases())
    def check(case):
        outcomes = []
        try:
            _check(case, outcomes)
            results.append((case, outcomes[0]))
        except Exception as err:  # recorded, not raised: no shrinking in a survey
            results.append((case, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"))
        if log is not None:
            outcome = results[-1][1]
            print(f"FUZZ {len(results)} {outcome}", file=log, flush=True)
            if outcome not in ("exported", "refused"):
                print("      " + graph_fuzz.describe(case).replace("\n", "\n      "), file=log,
                      flush=True)

    if hypothesis_seed is not None:
        check = seed(hypothesis_seed)(check)
    check()
    return results


if __name__ == "__main__":
    import collections
    import sys
    import time

    start = time.time()
    # A third argument "sequence" surveys graph_fuzz.sequence_cases instead.
    results = survey(int(sys.argv[1]) if len(sys.argv) > 1 else 50, log=sys.stderr,
                     hypothesis_seed=int(sys.argv[2]) if len(sys.argv) > 2 else None,
                     strategy=graph_fuzz.sequence_cases() if sys.argv[3:] == ["sequence"]
                     else None)
    groups = collections.defaultdict(list)
    for case, outcome in results:
        groups[outcome].append(case)
    for outcome, cases_ in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(cases_):4d}  {outcome}", file=sys.stderr)
        if outcome not in ("exported", "refused"):
            print("      e.g. " + graph_fuzz.describe(min(cases_, key=lambda c: len(c.ops)))
                  .replace("\n", "\n      "), file=sys.stderr)
    print(f"{len(results)} graphs in {time.time() - start:.0f} s", file=sys.stderr)
