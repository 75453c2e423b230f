"""LSTM, GRU, SimpleRNN and TimeDistributed through quantize_model -> calibrate/fit -> export.

Like tests/test_transformer_layers.py: tiny models (4 steps, 4-6 units) with the real
converter and LiteRT. The .tflite must be integer-only with int8 input and output, hold
the unrolled per-step ops (no WHILE, no fused sequence op), and match the QAT model op by
op within 1 LSB, every inner tensor of the recurrent layer included.
"""

import keras
import numpy as np
import pytest

import tfqat
from tfqat.export.reader import read_tflite
from tfqat.nn.recurrent import QuantGRU, QuantLSTM, QuantSimpleRNN
from tfqat.rewrite.rules import recurrent as recurrent_rules
import layer_checks
from layer_checks import (check_matches_float_at_16_bits, fit_briefly, inner_quantizers,
                          save_and_load)

L = keras.layers
STEPS, FEATURES = 4, 3
SEQUENCE = (STEPS, FEATURES)


def head(x):
    if len(x.shape) > 2:
        x = L.Flatten()(x)
    return L.Dense(4, name="head")(x)


def rnn(cls, **kwargs):
    return lambda inp: head(getattr(L, cls)(6, name="rnn", **kwargs)(inp))


def time_distributed(inp):
    x = L.TimeDistributed(L.Conv2D(3, 3, activation="relu"), name="td_conv")(inp)
    x = L.Reshape((STEPS, -1))(x)
    return head(L.TimeDistributed(L.Dense(4), name="td_dense")(x))


UNROLLED = {"UNPACK": 1, "CONV_2D": STEPS + 1}
LSTM_OPS = {**UNROLLED, "LOGISTIC": 3 * STEPS - 1, "TANH": 2 * STEPS, "MUL": 3 * STEPS - 1}
GRU_OPS = {**UNROLLED, "LOGISTIC": STEPS, "TANH": STEPS, "SUB": STEPS}
# name: (builder, input shape, TFLite ops that must appear, QuantConfig settings)
CASES = {
    "lstm": (rnn("LSTM"), SEQUENCE, LSTM_OPS, {}),
    "lstm_sequences_backwards": (rnn("LSTM", return_sequences=True, go_backwards=True),
                                 SEQUENCE, {**LSTM_OPS, "PACK": 1}, {}),
    "lstm_per_tensor": (rnn("LSTM", use_bias=False), SEQUENCE,
                        {"UNPACK": 1, "FULLY_CONNECTED": STEPS + 1}, {"per_channel": False}),
    "gru": (rnn("GRU"), SEQUENCE, GRU_OPS, {}),
    "gru_sequences": (rnn("GRU", return_sequences=True), SEQUENCE, {**GRU_OPS, "PACK": 1}, {}),
    "gru_reset_before": (rnn("GRU", reset_after=False), SEQUENCE,
                         {"UNPACK": 1, "CONV_2D": 2 * STEPS - 1, "LOGISTIC": STEPS}, {}),
    "gru_no_bias": (rnn("GRU", use_bias=False), SEQUENCE, GRU_OPS, {}),
    "simple_rnn": (rnn("SimpleRNN"), SEQUENCE, {**UNROLLED, "TANH": STEPS}, {}),
    "simple_rnn_sequences_backwards": (
        rnn("SimpleRNN", return_sequences=True, go_backwards=True), SEQUENCE,
        {**UNROLLED, "TANH": STEPS, "PACK": 1}, {}),
    "time_distributed": (time_distributed, (STEPS, 5, 5, 2), {"CONV_2D": 2}, {}),
}
FAST_CASES = ("lstm_sequences_backwards", "gru", "simple_rnn", "time_distributed")


def fast_or_slow(names):
    return [name if name in FAST_CASES else pytest.param(name, marks=pytest.mark.slow)
            for name in names]


def float_model(name):
    build, shape, _, _ = CASES[name]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="x")
    model = keras.Model(inp, build(inp))
    rng = np.random.default_rng(3)  # non-zero biases, as after training
    for layer in model.layers:
        for weight in layer.weights:
            if "bias" in weight.path:
                weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    return model


def inputs(name, n=32, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, *CASES[name][1])).astype("float32")


def assert_every_op_output_is_read(flatbuffer):
    """Issue 11: the converter's int8 pass treats a SPLIT with an unused output
    nondeterministically: the same saved LSTM (its step-0 SPLIT's forget output unused)
    exported 12 times in one process came out integer-only 11 times, and once with that
    SPLIT float (more often under load: 4 of 6 runs right after fit). So no op of the
    unrolled layers may leave an output unread; checked on every .tflite here."""
    model = read_tflite(flatbuffer)
    read = {i for op in model.ops for i in op.input_indices} | {t.index for t in model.outputs}
    unread = [(op.name, model.tensors[i].name) for op in model.ops
              for i in op.output_indices if i not in read]
    assert not unread, unread


def check_export(qat, x, expected_ops):
    flatbuffer, _ = layer_checks.check_export(
        qat, x, expected_ops, quantize_ops=None,
        absent_ops=("WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN"))
    assert_every_op_output_is_read(flatbuffer)
    return flatbuffer


@pytest.mark.parametrize("name", fast_or_slow(sorted(CASES)))
def test_layer_exports_integer_only_and_matches_op_by_op(name):
    qat = tfqat.quantize_model(float_model(name), tfqat.QuantConfig(**CASES[name][3]))
    x = inputs(name)
    ranges = tfqat.calibrate(qat, x)
    assert all(q.name in ranges for q in inner_quantizers(qat) if q.fixed_range is None)
    check_export(qat, x, CASES[name][2])


@pytest.mark.parametrize("name", ["lstm_sequences_backwards", "gru_reset_before", *(
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("lstm", "gru", "gru_sequences", "simple_rnn_sequences_backwards",
                 "time_distributed"))])
def test_qat_layer_matches_the_float_layer_at_16_bits(name):
    check_matches_float_at_16_bits(float_model(name), inputs(name, 16), atol=5e-3)


@pytest.mark.parametrize("name, layer", [
    ("simple_rnn", "rnn"),
    pytest.param("gru_sequences", "rnn", marks=pytest.mark.slow),
    pytest.param("lstm", "rnn", marks=pytest.mark.slow),  # issue 11: see check_export
])
def test_fit_tracks_inner_ranges_then_saves_loads_and_exports(tmp_path, name, layer):
    qat = tfqat.quantize_model(float_model(name))
    x = inputs(name, 64)
    fit_briefly(qat, x, np.random.default_rng(2).integers(0, 4, 64), epochs=2)
    composite = qat.get_layer(layer)
    tracked = [q for q in composite.inner_quantizers if q.fixed_range is None]
    assert tracked and all(int(q.step.numpy()) == 8 and q.is_calibrated for q in tracked)
    loaded = save_and_load(qat, tmp_path / "qat.keras", x)
    assert type(loaded.get_layer(layer)) is type(composite)
    for q, q_loaded in zip(composite.inner_quantizers, loaded.get_layer(layer).inner_quantizers):
        assert q.name == q_loaded.name and q.current_range() == q_loaded.current_range()
    check_export(loaded, x, CASES[name][2])


def test_rule_maps_each_recurrent_layer_with_its_settings():
    inp = keras.Input(SEQUENCE, name="x")
    a = L.LSTM(4, return_sequences=True, name="a")(inp)
    b = L.GRU(4, reset_after=False, go_backwards=True, return_sequences=True, name="b")(a)
    c = L.SimpleRNN(4, dropout=0.2, name="c")(b)
    qat = tfqat.quantize_model(keras.Model(inp, c))
    assert type(qat.get_layer("a")) is QuantLSTM and qat.get_layer("a").return_sequences
    gru = qat.get_layer("b")
    assert type(gru) is QuantGRU and not gru.reset_after and gru.go_backwards
    simple = qat.get_layer("c")
    assert type(simple) is QuantSimpleRNN and simple.timesteps == STEPS and simple.dropout == 0.2
    # SimpleRNN's output is TANH's: the rule gives it TANH's fixed int8 range.
    assert qat.get_layer("c_fq").fixed_range == (-1.0, 127.0 / 128.0)


def test_dropout_acts_in_training_only():
    keras.utils.set_random_seed(0)
    layer = QuantGRU(4, timesteps=STEPS, dropout=0.5, recurrent_dropout=0.5, name="gru")
    x = inputs("gru", 8)
    layer(x, training=True)
    np.testing.assert_array_equal(layer(x, training=False), layer(x, training=False))
    assert not np.allclose(layer(x, training=True), layer(x, training=True))


@pytest.mark.parametrize("build, message", [
    (lambda: L.LSTM(4, activation="relu", name="odd"), "odd.*activation='relu'"),
    (lambda: L.GRU(4, recurrent_activation="hard_sigmoid", name="odd"),
     "odd.*recurrent_activation='hard_sigmoid'"),
    (lambda: L.SimpleRNN(4, stateful=True, name="odd"), "odd.*stateful=True"),
    (lambda: L.LSTM(4, return_state=True, name="odd"), "odd.*return_state=True"),
])
def test_unsupported_recurrent_settings_are_refused_with_the_layer_name(build, message):
    inp = keras.Input(SEQUENCE, batch_size=2, name="x")
    out = build()(inp)
    out = out[0] if isinstance(out, (list, tuple)) else out
    with pytest.raises(tfqat.UnsupportedLayerError, match=message):
        tfqat.quantize_model(keras.Model(inp, head(out)))


def test_variable_length_and_initial_state_are_refused():
    inp = keras.Input((None, FEATURES), name="x")
    with pytest.raises(tfqat.UnsupportedLayerError, match="gru.*no fixed sequence length"):
        tfqat.quantize_model(keras.Model(inp, L.GRU(4, name="gru")(inp)))
    inp = keras.Input(SEQUENCE, name="x")
    state = keras.Input((4,), name="state")
    out = L.GRU(4, name="gru")(inp, initial_state=state)
    with pytest.raises(tfqat.UnsupportedLayerError, match="gru.*initial_state"):
        tfqat.quantize_model(keras.Model([inp, state], out))


def test_recurrent_problems_lists_each_setting():
    layer = L.LSTM(4, activation="relu", stateful=True)
    assert recurrent_rules.recurrent_problems(layer) == ["activation='relu'", "stateful=True"]
    assert recurrent_rules.recurrent_problems(L.GRU(4)) == []


def test_time_distributed_needs_a_fixed_number_of_steps():
    inp = keras.Input((None, 6), name="x")
    out = L.TimeDistributed(L.Dense(4), name="td")(inp)
    with pytest.raises(ValueError, match="td.*fixed"):
        tfqat.quantize_model(keras.Model(inp, out))


def test_time_distributed_relu_is_fused_into_the_inner_layer():
    inp = keras.Input((STEPS, 6), name="x")
    out = L.TimeDistributed(L.Dense(4, activation="relu"), name="td")(inp)
    qat = tfqat.quantize_model(keras.Model(inp, out))
    assert qat.get_layer("td").activation == "relu"
    x = inputs("gru", 4)[..., :1].repeat(6, -1)
    np.testing.assert_array_equal(qat.get_layer("td_split").output.shape, (None, STEPS, 4))
    assert (np.asarray(qat(x)) >= 0).all()


def bidirectional(cls, merge_mode, **kwargs):
    def build(inp):
        layer = L.Bidirectional(getattr(L, cls)(5, **kwargs), merge_mode=merge_mode, name="bi")
        return head(layer(inp))
    return build


# name: (builder, TFLite ops that must appear)
BIDIRECTIONAL = {
    "lstm_concat": (bidirectional("LSTM", "concat"),
                    {"UNPACK": 2, "CONCATENATION": 1, "LOGISTIC": 2 * (3 * STEPS - 1)}),
    "gru_sum_sequences": (bidirectional("GRU", "sum", return_sequences=True),
                          {"UNPACK": 2, "PACK": 2, "ADD": 1}),
    "lstm_concat_sequences": (bidirectional("LSTM", "concat", return_sequences=True),
                              {"UNPACK": 2, "PACK": 2, "CONCATENATION": 1}),
    "gru_concat": (bidirectional("GRU", "concat"), {"UNPACK": 2, "CONCATENATION": 1}),
    "lstm_sum_sequences": (bidirectional("LSTM", "sum", return_sequences=True),
                           {"UNPACK": 2, "PACK": 2}),
    "gru_ave": (bidirectional("GRU", "ave"), {"UNPACK": 2}),
    "simple_rnn_mul_sequences": (bidirectional("SimpleRNN", "mul", return_sequences=True),
                                 {"UNPACK": 2, "PACK": 2, "TANH": 2 * STEPS}),
    # The merge quantizer at TANH's fixed range: no requantize (QUANTIZE) after a TANH.
    "simple_rnn_concat_sequences": (bidirectional("SimpleRNN", "concat", return_sequences=True),
                                    {"PACK": 2, "CONCATENATION": 1}),
}
for _name, (_build, _ops) in BIDIRECTIONAL.items():
    CASES[f"bidirectional_{_name}"] = (_build, SEQUENCE, _ops, {})


@pytest.mark.parametrize("name", ["lstm_concat_sequences", "gru_ave", *(
    pytest.param(name, marks=pytest.mark.slow) for name in
    ("lstm_concat", "gru_sum_sequences", "simple_rnn_mul_sequences"))])
def test_bidirectional_with_quantizers_bypassed_matches_the_float_layer(name):
    # Both directions' float weights are loaded, and the backward direction's sequence is in
    # input order as in Keras (16-bit weights: what is left is their rounding).
    model = float_model(f"bidirectional_{name}")
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(weight_bits=16))
    x = inputs(f"bidirectional_{name}", 16)
    with tfqat.bypass_quantizers(qat):
        np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=2e-4)
    bi = qat.get_layer("bi")
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards


@pytest.mark.parametrize("name", ["lstm_concat", "gru_sum_sequences", *(
    pytest.param(name, marks=pytest.mark.slow) for name in
    ("lstm_concat_sequences", "gru_concat", "lstm_sum_sequences", "gru_ave",
     "simple_rnn_mul_sequences", "simple_rnn_concat_sequences"))])
def test_bidirectional_fits_saves_loads_and_exports(tmp_path, name):
    name = f"bidirectional_{name}"
    test_fit_tracks_inner_ranges_then_saves_loads_and_exports(tmp_path, name, "bi")
    if "simple_rnn_concat" in name:
        ops = tfqat.inspect_tflite(tfqat.export_tflite(keras.models.load_model(
            tmp_path / "qat.keras"))).op_histogram
        assert "QUANTIZE" not in ops, dict(ops)


def test_bidirectional_refuses_two_outputs_and_an_unmirrored_backward_layer():
    inp = keras.Input(SEQUENCE, name="x")
    out = L.Bidirectional(L.LSTM(4), merge_mode=None, name="bi")(inp)
    with pytest.raises(tfqat.UnsupportedLayerError, match="bi.*merge_mode=None"):
        tfqat.quantize_model(keras.Model(inp, head(L.Concatenate()(out))))
    backward = L.LSTM(4, go_backwards=True, use_bias=False)
    out = L.Bidirectional(L.LSTM(4), backward_layer=backward, name="bi2")(inp)
    with pytest.raises(tfqat.UnsupportedLayerError, match="bi2.*backward_layer.*use_bias"):
        tfqat.quantize_model(keras.Model(inp, head(out)))
    out = L.Bidirectional(L.GRU(4, activation="relu"), name="bi3")(inp)
    with pytest.raises(tfqat.UnsupportedLayerError, match=r"Bidirectional\(GRU\) 'bi3'.*relu"):
        tfqat.quantize_model(keras.Model(inp, head(out)))
