"""Rules for recurrent layers: LSTM, GRU and SimpleRNN unrolled into int8 ops per time step
(tfqat.nn.recurrent), and TimeDistributed around a layer that has a rule of its own."""

from __future__ import annotations

import keras

from tfqat.nn.quantizers import FIXED_RANGES
from tfqat.nn.recurrent import (MergeTimeSteps, QuantBidirectional, QuantGRU, QuantLSTM,
                                QuantSimpleRNN, SplitTimeSteps)
from tfqat.rewrite.rules.base import (SCALE_PRESERVING, TRACKED, OutputQuant, Replacement,
                                      RewriteRule, Step)
from tfqat.rewrite.rules.linear import build_fused_linear, is_linear

QAT_CLASSES = {
    keras.layers.LSTM: QuantLSTM,
    keras.layers.GRU: QuantGRU,
    keras.layers.SimpleRNN: QuantSimpleRNN,
}


def is_recurrent(layer) -> bool:
    """LSTM, GRU or SimpleRNN (exact class)."""
    return type(layer) in QAT_CLASSES


def is_bidirectional(layer) -> bool:
    """Bidirectional around an LSTM, GRU or SimpleRNN."""
    return type(layer) is keras.layers.Bidirectional and is_recurrent(layer.forward_layer)


# Settings a backward_layer may differ in from its forward layer (Keras's mirrored copy).
_MIRRORED = ("name", "go_backwards")


def bidirectional_problems(layer) -> list:
    """What tfqat cannot run of a Bidirectional around an LSTM/GRU/SimpleRNN ([] if none).

    Example:
      >>> bidirectional_problems(keras.layers.Bidirectional(keras.layers.GRU(4), merge_mode=None))
      ['merge_mode=None']
    """
    forward, backward = layer.forward_layer, layer.backward_layer
    problems = recurrent_problems(forward)
    if layer.merge_mode not in QuantBidirectional.MERGE_MODES:
        problems.append(f"merge_mode={layer.merge_mode!r}")
    if forward.go_backwards:
        problems.append("a forward layer with go_backwards=True")
    if type(backward) is not type(forward):
        problems.append(f"a backward_layer of another class ({type(backward).__name__})")
    else:
        f_config, b_config = forward.get_config(), backward.get_config()
        differ = sorted(key for key in f_config.keys() | b_config.keys()
                        if key not in _MIRRORED and f_config.get(key) != b_config.get(key))
        if differ or not backward.go_backwards:
            problems.append("a backward_layer with other settings than the forward layer's ("
                            + ", ".join(differ or ["go_backwards=False"]) + ")")
    return problems


def _name(fn) -> str:
    return keras.activations.serialize(fn) if callable(fn) else str(fn)


def recurrent_problems(layer) -> list:
    """The settings of an LSTM/GRU/SimpleRNN that tfqat cannot run as int8 ops ([] if none).

    Example:
      >>> recurrent_problems(keras.layers.LSTM(4, stateful=True))
      ['stateful=True']
    """
    problems = []
    if _name(layer.activation) != "tanh":
        problems.append(f"activation={_name(layer.activation)!r}")
    if hasattr(layer, "recurrent_activation") and _name(layer.recurrent_activation) != "sigmoid":
        problems.append(f"recurrent_activation={_name(layer.recurrent_activation)!r}")
    for flag in ("stateful", "return_state"):
        if getattr(layer, flag):
            problems.append(f"{flag}=True")
    return problems


def uses_unsupported_recurrent_call(node) -> bool:
    """Whether a graph node is an LSTM/GRU/SimpleRNN that tfqat refuses: unsupported settings,
    an initial_state or other extra input, or an input without a fixed sequence length.

    Example:
      >>> x = keras.Input((None, 3))
      >>> model = keras.Model(x, keras.layers.GRU(4)(x))
      >>> uses_unsupported_recurrent_call(tfqat.rewrite.graph.flatten_model(model).nodes[0])
      True
    """
    return (is_recurrent(node.layer) or is_bidirectional(node.layer)) and \
        bool(_call_problems(node))


def _call_problems(node) -> list:
    layer = node.layer
    problems = bidirectional_problems(layer) if is_bidirectional(layer) \
        else recurrent_problems(layer)
    if len(node.inputs) != 1:
        problems.append("an initial_state (or another input besides the sequence)")
    elif _sequence_shape(layer)[1] is None:
        problems.append("an input with no fixed sequence length")
    return problems


def _sequence_shape(layer):
    return tuple(layer.input.shape)


def unsupported_recurrent_call_message(node) -> str:
    layer = node.layer
    kind = type(layer).__name__
    if is_bidirectional(layer):
        kind = f"Bidirectional({type(layer.forward_layer).__name__})"
    return (f"Cannot quantize {kind} '{layer.name}': it uses {', '.join(_call_problems(node))}. "
            f"tfqat runs {kind} as int8 ops unrolled over a fixed number of time steps, with "
            "the default activations (tanh, sigmoid gates), zero initial states and the last "
            "hidden state or the whole sequence as its only output (a Bidirectional: with "
            "merge_mode 'concat', 'sum', 'mul' or 'ave' and the default mirrored "
            "backward_layer). Give keras.Input a fixed "
            "sequence length and rebuild the layer with those settings, or leave it in float "
            f"with QuantConfig(exclude=('{layer.name}',)).")


def build_recurrent(match, cfg) -> Replacement:
    """LSTM/GRU/SimpleRNN as the tfqat.nn.recurrent layer unrolled over the input's steps.

    The output is a tracked fake quant, or TANH's fixed range for SimpleRNN (its
    hidden state is TANH's output).

    Example:
      >>> x = keras.Input((5, 3)); gru = keras.layers.GRU(4); _ = gru(x)
      >>> type(build_recurrent({"recurrent": gru}, LayerQuantConfig()).layers[0]).__name__
      'QuantGRU'
    """
    layer = match["recurrent"]
    settings = dict(
        timesteps=_sequence_shape(layer)[1], return_sequences=layer.return_sequences,
        go_backwards=layer.go_backwards, use_bias=layer.use_bias, dropout=layer.dropout,
        recurrent_dropout=layer.recurrent_dropout, weight_bits=cfg.weight_bits,
        per_channel=cfg.per_channel, activation_bits=cfg.activation_bits,
        ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay, name=layer.name)
    if type(layer) is keras.layers.GRU:
        settings["reset_after"] = layer.reset_after
    qat = QAT_CLASSES[type(layer)](layer.units, **settings)
    output = TRACKED
    if type(layer) is keras.layers.SimpleRNN:
        output = OutputQuant("fixed", FIXED_RANGES["tanh"])
    return Replacement([qat], output, lambda: qat.load_float_weights(layer))


def build_bidirectional(match, cfg) -> Replacement:
    """Bidirectional(LSTM/GRU/SimpleRNN) as a QuantBidirectional: both directions unrolled.

    With merge_mode "concat" the output is the CONCATENATION of the directions' outputs,
    already at the one scale of the layer's `merge` quantizer (no quantizer follows);
    else a tracked fake quant follows the merge.

    Example:
      >>> x = keras.Input((5, 3)); bi = keras.layers.Bidirectional(keras.layers.GRU(4))
      >>> _ = bi(x)
      >>> type(build_bidirectional({"bidirectional": bi}, LayerQuantConfig()).layers[0]).__name__
      'QuantBidirectional'
    """
    wrapper = match["bidirectional"]
    layer = wrapper.forward_layer
    rnn_config = dict(
        units=layer.units, timesteps=_sequence_shape(wrapper)[1],
        return_sequences=layer.return_sequences, use_bias=layer.use_bias,
        dropout=layer.dropout, recurrent_dropout=layer.recurrent_dropout,
        weight_bits=cfg.weight_bits, per_channel=cfg.per_channel)
    if type(layer) is keras.layers.GRU:
        rnn_config["reset_after"] = layer.reset_after
    qat = QuantBidirectional(QAT_CLASSES[type(layer)].__name__, rnn_config, wrapper.merge_mode,
                             activation_bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
                             quant_delay=cfg.quant_delay, name=wrapper.name)
    output = SCALE_PRESERVING if wrapper.merge_mode == "concat" else TRACKED
    return Replacement([qat], output, lambda: qat.load_float_weights(wrapper))


def is_time_distributed_linear(layer) -> bool:
    """TimeDistributed around a Dense/Conv2D/Conv1D/DepthwiseConv2D/Conv2DTranspose without
    an activation, or with ReLU/ReLU6/linear (an activation that the linear rule fuses)."""
    return (type(layer) is keras.layers.TimeDistributed and is_linear(layer.layer)
            and _name(getattr(layer.layer, "activation", "linear")) in _FUSABLE)


_FUSABLE = {"linear": None, "relu": "relu", "relu6": "relu6"}


def build_time_distributed(match, cfg) -> Replacement:
    """TimeDistributed(inner) as inner's QAT layer over the batch and time axes merged:
    RESHAPE, the int8 op, RESHAPE (both reshapes keep the int8 scale).

    Example:
      >>> x = keras.Input((4, 6, 6, 3)); td = keras.layers.TimeDistributed(keras.layers.Conv2D(2, 3))
      >>> _ = td(x)
      >>> [type(l).__name__ for l in build_time_distributed({"wrapper": td}, LayerQuantConfig()).layers]
      ['MergeTimeSteps', 'QuantConv2D', 'SplitTimeSteps']
    """
    wrapper = match["wrapper"]
    inner = wrapper.layer
    timesteps = _sequence_shape(wrapper)[1]
    if timesteps is None:
        raise ValueError(
            f"TimeDistributed '{wrapper.name}' has an input with no fixed number of time steps; "
            "tfqat merges time into the batch axis with a static reshape. Give keras.Input a "
            f"fixed length, or leave it in float with QuantConfig(exclude=('{wrapper.name}',)).")
    activation = _FUSABLE[_name(getattr(inner, "activation", "linear"))]
    # The inner layer's ReLU/ReLU6 is fused into the QAT layer, as the linear rule fuses one.
    relu = keras.layers.ReLU(6.0 if activation == "relu6" else None) if activation else None
    fused = build_fused_linear({"linear": inner, "bn": None, "relu": relu}, cfg)
    (qat,) = fused.layers
    qat.name = wrapper.name
    return Replacement([MergeTimeSteps(name=f"{wrapper.name}_merge"), qat,
                        SplitTimeSteps(timesteps, name=f"{wrapper.name}_split")], TRACKED,
                       fused.load_weights)


RULES = (
    RewriteRule("recurrent", (Step("recurrent", is_recurrent),), build_recurrent),
    RewriteRule("bidirectional_recurrent", (Step("bidirectional", is_bidirectional),),
                build_bidirectional),
    RewriteRule("time_distributed_linear", (Step("wrapper", is_time_distributed_linear),),
                build_time_distributed),
)
