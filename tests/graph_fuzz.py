"""A property-based generator of random Keras graphs over the layers tfqat supports.

`cases()` is a hypothesis strategy of `FuzzCase`s: a small DAG of layer specs
(`OpSpec`) on one image input, a `QuantConfig`, a training schedule and a
calibration method. Specs are plain frozen dataclasses, so a failing case
shrinks to a short, printable graph, and `build_model(case)` turns one back
into a float Keras model (Functional, or Sequential when the graph is a
chain). tests/test_fuzz_graphs.py checks the properties on each case.

Shapes are tracked while drawing, so every drawn graph is a valid Keras
model: merges only take tensors of matching shape, and the spatial size stays
in 1..16.

`sequence_cases()` draws the sequence profile: graphs on a (T, F) float input
or on int32 token ids (Embedding [+ PositionEmbedding]) over Dense, EinsumDense,
LayerNormalization, MultiHeadAttention (self and cross), Conv1D, LSTM/GRU/
SimpleRNN, 1-D pools and two custom layers registered through tfqat.QuantRegistry
(FuzzScale, FuzzDense; `custom_registry()`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from hypothesis import strategies as st

import tfqat

L = keras.layers

# Activations a standalone "act" op may use (the Keras names tfqat's rules know).
ACTIVATIONS = ("relu", "relu6", "leaky_relu", "hard_swish", "swish", "sigmoid", "tanh", "elu",
               "gelu", "hard_sigmoid", "softmax", "linear")
FUSABLE = (None, "relu", "relu6")
# One input, any shape; the spatial ops check the size themselves.
UNARY = ("conv", "dwconv", "sepconv", "tconv", "bn", "act", "maxpool", "avgpool", "gap",
         "upsample", "zeropad", "dropout", "se", "dead", "nested", "sequential", "kop")
BINARY = ("add", "subtract", "multiply", "concat", "maximum", "minimum", "op_concat")
# Drawn in place of the key kind (a second draw): new kinds in their own draw keep
# the cases drawn before they were added (the fast profile's graphs) mostly as they were.
VARIANTS = {"act": ("act", "prelu"), "multiply": ("multiply", "maximum", "minimum")}
# Keras ops on the Functional graph ("kop" picks one; "op_concat" is keras.ops.concatenate).
KERAS_OPS = ("transpose", "slice", "reshape", "mean")
MAX_SPATIAL = 16


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One layer (or block) of a fuzzed graph: `kind`, the indices of the tensors it reads
    (0 is the model input, i + 1 the output of op i) and its parameters, as sorted pairs."""

    kind: str
    inputs: tuple
    params: tuple = ()

    def param(self, name, default=None):
        return dict(self.params).get(name, default)


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    input_shape: tuple
    ops: tuple  # of OpSpec
    head: str  # "flatten_dense" | "gap_dense" | "none" | "dense_softmax"
    sequential: bool  # build as keras.Sequential when the graph is a chain
    config: dict  # QuantConfig fields
    fit_steps: int
    calibration: str | None  # None: ranges come from the fit (the EMA tracker)
    seed: int
    profile: str = "image"  # "image" (cases()) or "sequence" (sequence_cases())
    tokens: int = 0  # sequence profile: the vocabulary of int32 token ids; 0: a float input

    def quant_config(self) -> tfqat.QuantConfig:
        return tfqat.QuantConfig(**self.config)

    def is_chain(self) -> bool:
        return all(op.inputs == (i,) for i, op in enumerate(self.ops))


def _out_shape(kind, params, shapes):
    """The output shape of an op on inputs of `shapes`, or None if it does not apply."""
    h, w, c = shapes[0]
    p = dict(params)
    if kind in ("conv", "sepconv", "dead"):
        s = p.get("strides", 1)
        return (-(-h // s), -(-w // s), p.get("filters", c))
    if kind == "tconv":
        s = p.get("strides", 1)
        return None if h * s > MAX_SPATIAL else (h * s, w * s, p["filters"])
    if kind == "dwconv":
        return (h, w, c * p.get("depth_multiplier", 1))
    if kind in ("maxpool", "avgpool"):
        s = p.get("strides", 2)
        return (-(-h // s), -(-w // s), c)
    if kind == "gap":
        return (1, 1, c)
    if kind == "upsample":
        return None if 2 * h > MAX_SPATIAL else (2 * h, 2 * w, c)
    if kind == "zeropad":
        return None if h + 2 > MAX_SPATIAL else (h + 2, w + 2, c)
    if kind in ("nested", "sequential"):
        return (h, w, p["filters"])
    if kind in ("add", "subtract", "multiply", "maximum", "minimum"):
        return shapes[0] if all(s == shapes[0] for s in shapes) else None
    if kind == "kop":
        return {"transpose": (w, h, c), "reshape": (w, h, c), "slice": (-(-h // 2), w, c),
                "mean": (1, w, c)}[p["op"]]
    if kind in ("concat", "op_concat"):
        if any(s[:2] != shapes[0][:2] for s in shapes):
            return None
        return (h, w, sum(s[2] for s in shapes))
    return (h, w, c)  # bn, act, dropout, se


@st.composite
def _op_params(draw, kind, shape):
    h = shape[0]
    p = {}
    if kind in ("conv", "sepconv", "tconv", "nested", "sequential"):
        p["filters"] = draw(st.sampled_from((4, 2, 8)))
    if kind in ("conv", "sepconv", "tconv", "dwconv"):
        p["kernel_size"] = draw(st.sampled_from((3, 1)))
        p["activation"] = draw(st.sampled_from(FUSABLE))
        p["use_bias"] = draw(st.booleans())
        p["bn"] = draw(st.booleans())
        if p["bn"]:
            p["relu_after_bn"] = draw(st.sampled_from(FUSABLE))
    if kind in ("conv", "sepconv") and h >= 4:
        p["strides"] = draw(st.sampled_from((1, 2)))
    if kind == "tconv":
        p["strides"] = draw(st.sampled_from((1, 2)))
    if kind == "dwconv":
        p["depth_multiplier"] = draw(st.sampled_from((1, 2)))
    if kind == "dead":
        p["filters"] = draw(st.sampled_from((2, 4)))
        p["bn_after"] = draw(st.booleans())
    if kind == "act":
        p["activation"] = draw(st.sampled_from(ACTIVATIONS))
    if kind in ("maxpool", "avgpool"):
        p["pool_size"], p["strides"] = draw(st.sampled_from(((2, 2), (3, 1))))
        p["relu_after"] = draw(st.sampled_from(FUSABLE))
    if kind == "upsample":
        p["interpolation"] = draw(st.sampled_from(("nearest", "bilinear")))
    if kind == "bn":
        p["relu_after"] = draw(st.sampled_from(FUSABLE))
    if kind in ("add", "subtract", "multiply", "concat", "maximum", "minimum"):
        p["relu_after"] = draw(st.sampled_from(FUSABLE))
    if kind == "prelu":
        p["shared_axes"] = draw(st.sampled_from((None, (1, 2))))
    if kind == "kop":
        p["op"] = draw(st.sampled_from(KERAS_OPS))
    if kind == "se":
        p["squeeze"] = draw(st.sampled_from((2, 4)))
    return tuple(sorted(p.items()))


@st.composite
def cases(draw, max_ops=10):
    """A FuzzCase: a random DAG of 1..max_ops ops plus a config and schedule."""
    size = draw(st.sampled_from((6, 4, 8)))
    shapes = [(size, size, 3)]
    ops = []
    num_ops = draw(st.integers(1, max_ops))
    for _ in range(num_ops):
        kind = draw(st.sampled_from(UNARY + BINARY[:4]))
        if kind in VARIANTS:
            kind = draw(st.sampled_from(VARIANTS[kind]))
        # Recent tensors are likelier inputs; index len(shapes) - 1 - back.
        back = draw(st.integers(0, len(shapes) - 1))
        first = len(shapes) - 1 - back
        inputs = [first]
        if kind in BINARY:
            if kind in ("concat", "op_concat"):
                fits = [i for i, s in enumerate(shapes) if s[:2] == shapes[first][:2]]
            else:
                fits = [i for i, s in enumerate(shapes) if s == shapes[first]]
            inputs.append(draw(st.sampled_from(fits)))  # may be `first` itself: x (+) x
            if kind in ("concat", "op_concat") and draw(st.booleans()):
                inputs.append(draw(st.sampled_from(fits)))
        params = draw(_op_params(kind, shapes[first]))
        out = _out_shape(kind, params, [shapes[i] for i in inputs])
        if out is None:
            continue
        ops.append(OpSpec(kind, tuple(inputs), params))
        shapes.append(out)
    head = draw(st.sampled_from(("flatten_dense", "gap_dense", "none", "dense_softmax")))
    config = dict(
        per_channel=draw(st.booleans()),
        weight_bits=draw(st.sampled_from((8, 7, 6, 5, 4))),
        # Below 8 bits export refuses (a refusal to check, but rarely: it ends the case early).
        activation_bits=draw(st.sampled_from((8,) * 15 + (7, 4))),
        quant_delay=draw(st.sampled_from((0, 0, 1, 3))),
        bn_freeze_delay=draw(st.sampled_from((None, 2, 0, 5))),
    )
    return FuzzCase(
        input_shape=shapes[0], ops=tuple(ops), head=head, sequential=draw(st.booleans()),
        config=config, fit_steps=draw(st.sampled_from((3, 1, 4))),
        calibration=draw(st.sampled_from(("minmax", None, "percentile", "entropy"))),
        seed=draw(st.integers(0, 2**16)))


# ---- building ---------------------------------------------------------------

def _linear_block(op, index):
    """Conv-like layer [+ BN] [+ ReLU] as a list of layers."""
    p = dict(op.params)
    name = f"{op.kind}{index}"
    common = dict(activation=p["activation"], use_bias=p["use_bias"], name=name)
    k = p["kernel_size"]
    if op.kind == "conv":
        layer = L.Conv2D(p["filters"], k, strides=p.get("strides", 1), padding="same", **common)
    elif op.kind == "sepconv":
        layer = L.SeparableConv2D(p["filters"], k, strides=p.get("strides", 1), padding="same",
                                  **common)
    elif op.kind == "tconv":
        layer = L.Conv2DTranspose(p["filters"], k, strides=p["strides"], padding="same", **common)
    else:
        layer = L.DepthwiseConv2D(k, padding="same", depth_multiplier=p["depth_multiplier"],
                                  **common)
    layers = [layer]
    if p["bn"]:
        layers.append(L.BatchNormalization(name=f"{name}_bn"))
        if p.get("relu_after_bn"):
            layers.append(_relu(p["relu_after_bn"], f"{name}_bn_relu"))
    return layers


def _relu(kind, name):
    return L.ReLU(6.0 if kind == "relu6" else None, name=name)


def _activation(kind, name):
    if kind == "leaky_relu":
        return L.LeakyReLU(0.2, name=name)
    if kind == "elu":
        return L.ELU(name=name)
    if kind == "softmax":
        return L.Softmax(name=name)
    return L.Activation(kind, name=name)


def _unary_layers(op, index, shape):
    """The layers of a one-input op, applied in a chain."""
    p = dict(op.params)
    name = f"{op.kind}{index}"
    if op.kind in ("conv", "sepconv", "tconv", "dwconv"):
        return _linear_block(op, index)
    if op.kind == "bn":
        layers = [L.BatchNormalization(name=name)]
    elif op.kind == "act":
        return [_activation(p["activation"], name)]
    elif op.kind == "maxpool":
        layers = [L.MaxPooling2D(p["pool_size"], p["strides"], padding="same", name=name)]
    elif op.kind == "avgpool":
        layers = [L.AveragePooling2D(p["pool_size"], p["strides"], padding="same", name=name)]
    elif op.kind == "gap":
        return [L.GlobalAveragePooling2D(keepdims=True, name=name)]
    elif op.kind == "upsample":
        return [L.UpSampling2D(interpolation=p["interpolation"], name=name)]
    elif op.kind == "zeropad":
        return [L.ZeroPadding2D(1, name=name)]
    elif op.kind == "dropout":
        return [L.Dropout(0.25, name=name)]
    elif op.kind == "prelu":
        axes = p["shared_axes"]
        return [L.PReLU(shared_axes=None if axes is None else list(axes), name=name)]
    elif op.kind == "dead":
        # A ReLU conv whose output is all zero: zero kernel, negative bias (set in build_model).
        layers = [L.Conv2D(p["filters"], 1, activation="relu", name=f"dead{index}")]
        if p["bn_after"]:
            layers.append(L.BatchNormalization(name=f"{name}_bn"))
        return layers
    elif op.kind in ("nested", "sequential"):
        block = [L.Conv2D(p["filters"], 3, padding="same", use_bias=False, name=f"{name}_conv"),
                 L.BatchNormalization(name=f"{name}_bn"), L.ReLU(name=f"{name}_relu")]
        if op.kind == "sequential":
            return [keras.Sequential([keras.Input(shape), *block], name=name)]
        inner_in = keras.Input(shape)
        x = inner_in
        for layer in block:
            x = layer(x)
        return [keras.Model(inner_in, x, name=name)]
    else:
        raise AssertionError(op.kind)
    if p.get("relu_after"):
        layers.append(_relu(p["relu_after"], f"{name}_relu"))
    return layers


def _squeeze_excite(x, op, index):
    c = x.shape[-1]
    se = L.GlobalAveragePooling2D(keepdims=True, name=f"se{index}_pool")(x)
    se = L.Conv2D(dict(op.params)["squeeze"], 1, activation="relu", name=f"se{index}_reduce")(se)
    se = L.Conv2D(c, 1, activation="sigmoid", name=f"se{index}_expand")(se)
    return L.Multiply(name=f"se{index}_excite")([x, se])


def _keras_op(x, op):
    kind = op.param("op")
    if kind == "transpose":
        return keras.ops.transpose(x, (0, 2, 1, 3))
    if kind == "reshape":
        return keras.ops.reshape(x, (-1, x.shape[2], x.shape[1], x.shape[3]))
    if kind == "slice":
        return x[:, ::2]
    return keras.ops.mean(x, axis=1, keepdims=True)


def _merge(op, index, tensors):
    if op.kind == "op_concat":
        return keras.ops.concatenate(tensors, axis=-1)
    name = f"{op.kind}{index}"
    layer = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply,
             "concat": L.Concatenate, "maximum": L.Maximum,
             "minimum": L.Minimum}[op.kind](name=name)
    out = layer(tensors)
    relu = op.param("relu_after")
    return _relu(relu, f"{name}_relu")(out) if relu else out


def _head_layers(case, shape):
    if case.head == "flatten_dense":
        return [L.Flatten(name="head_flatten"), L.Dense(3, name="head_dense")]
    if case.head == "gap_dense":
        return [L.GlobalAveragePooling2D(name="head_gap"), L.Dense(3, name="head_dense")]
    if case.head == "dense_softmax":
        return [L.Flatten(name="head_flatten"), L.Dense(3, name="head_dense"),
                L.Softmax(name="head_softmax")]
    return []


def build_model(case: FuzzCase) -> keras.Model:
    """The float model of `case`, with random weights and non-trivial BN statistics."""
    if case.profile == "sequence":
        return build_sequence_model(case)
    keras.backend.clear_session()
    keras.utils.set_random_seed(case.seed)
    if case.sequential and case.is_chain() and not any(
            op.kind in ("se", "kop", "op_concat") for op in case.ops):
        layers = [keras.Input(case.input_shape, name="x")]
        shape = case.input_shape
        for index, op in enumerate(case.ops):
            layers += _unary_layers(op, index, shape)
            shape = _out_shape(op.kind, op.params, [shape])
        layers += _head_layers(case, shape)
        model = keras.Sequential(layers, name="fuzz_sequential")
    else:
        inp = keras.Input(case.input_shape, name="x")
        tensors = [inp]
        for index, op in enumerate(case.ops):
            ins = [tensors[i] for i in op.inputs]
            if op.kind in BINARY:
                out = _merge(op, index, ins)
            elif op.kind == "se":
                out = _squeeze_excite(ins[0], op, index)
            elif op.kind == "kop":
                out = _keras_op(ins[0], op)
            else:
                out = ins[0]
                for layer in _unary_layers(op, index, tuple(out.shape[1:])):
                    out = layer(out)
            tensors.append(out)
        out = tensors[-1]
        for layer in _head_layers(case, tuple(out.shape[1:])):
            out = layer(out)
        model = keras.Model(inp, out, name="fuzz")
    _set_weights(model, np.random.default_rng(case.seed))
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _set_weights(model, rng):
    for layer in _all_layers(model):
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, c).astype("float32"))
        elif isinstance(layer, L.PReLU):  # Keras starts alpha at 0
            layer.alpha.assign(rng.uniform(-0.3, 0.5, layer.alpha.shape).astype("float32"))
        elif layer.name.startswith("dead"):
            layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
            layer.bias.assign(np.full(layer.bias.shape, -1.0, "float32"))


def describe(case: FuzzCase) -> str:
    """One line per op, for failure messages."""
    lines = [f"input {case.input_shape}, head {case.head}, sequential={case.sequential}, "
             f"config {case.config}, fit_steps {case.fit_steps}, calibration {case.calibration}, "
             f"seed {case.seed}"
             + (f", profile {case.profile}, tokens {case.tokens}" if case.profile != "image" else "")]
    lines += [f"  t{i + 1} = {op.kind}{list(op.inputs)} {dict(op.params)}"
              for i, op in enumerate(case.ops)]
    return "\n".join(lines)


# ---- the sequence profile ---------------------------------------------------
# Graphs on a (T, F) float input, or on int32 token ids through an Embedding (and
# optionally a learned PositionEmbedding), over the transformer, recurrent and 1-D layers
# and two custom layers registered through the public extension API (custom_registry).
# Shapes are (T, F) for sequences and (F,) for vectors (after an RNN without
# return_sequences, a pool or a flatten); T is 4..6 so that unrolled RNNs stay cheap.

# Any rank (a sequence or a vector).
SEQ_ANY = ("dense", "ln", "act", "einsum", "dropout", "scale", "cdense")
# Sequences only.
SEQ_ONLY = ("mha", "conv1d", "rnn", "posemb", "pool", "flatten")
SEQ_BINARY = ("add", "cross")
SEQ_ACTIVATIONS = ("gelu", "relu", "softmax")
RNNS = ("LSTM", "GRU", "SimpleRNN")


@keras.saving.register_keras_serializable(package="tfqat_fuzz")
class FuzzScale(keras.layers.Layer):
    """A user's layer: y = x * w, a learned scale per feature (registered as an int8 MUL)."""

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.w


@keras.saving.register_keras_serializable(package="tfqat_fuzz")
class FuzzDense(keras.layers.Layer):
    """A user's layer: y = x @ kernel + bias (registered by a QuantizeSpec on its kernel)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def custom_registry() -> tfqat.QuantRegistry:
    """The registry that teaches quantize_model the fuzzer's two custom layers.

    Example:
      >>> qat = tfqat.quantize_model(model, registry=custom_registry())
    """
    registry = tfqat.QuantRegistry()
    registry.register_int8_layer(FuzzScale, fuses_relu=True)  # one MUL: a ReLU fuses into it
    registry.register_spec(FuzzDense, tfqat.QuantizeSpec(
        # Per tensor: a per-channel kernel cannot pass FULLY_CONNECTED's weight transpose.
        weights={"kernel": tfqat.WeightQuant(per_channel=False)}, output="own"))
    return registry


def _seq_out_shape(kind, params, shapes):
    """The output shape of a sequence op on inputs of `shapes`, or None if it does not apply."""
    shape = shapes[0]
    p = dict(params)
    if kind in SEQ_ONLY and len(shape) != 2:
        return None
    # On vectors only: a user's x @ w + b on (batch, T, F) converts to a float
    # FULLY_CONNECTED (open; test_fuzz_graphs.test_shrunk_custom_matmul_layer_on_a_sequence_...).
    if kind == "cdense" and len(shape) != 1:
        return None
    if kind in ("dense", "einsum", "cdense"):
        return (*shape[:-1], p["units"])
    if kind == "conv1d":
        if shape[-1] % p["groups"] or p["filters"] % p["groups"]:
            return None
        return (shape[0], p["filters"])
    if kind == "rnn":
        return (shape[0], p["units"]) if p["return_sequences"] else (p["units"],)
    if kind == "pool":
        return (shape[1],)
    if kind == "flatten":
        return (shape[0] * shape[1],)
    if kind == "add":
        return shape if all(s == shape for s in shapes) else None
    if kind == "cross":
        return shape if len(shape) == 2 and len(shapes[1]) == 2 else None
    return shape  # ln, act, dropout, scale, mha, posemb


@st.composite
def _seq_op_params(draw, kind, shape):
    p = {}
    if kind in ("dense", "einsum", "cdense"):
        p["units"] = draw(st.sampled_from((4, 8, 6)))
    if kind in ("dense", "einsum"):
        p["activation"] = draw(st.sampled_from((None, "relu", "gelu")))
    if kind == "dense":
        p["use_bias"] = draw(st.booleans())
    if kind == "einsum":
        p["bias"] = draw(st.booleans())
    if kind == "ln":
        p["axis"] = draw(st.sampled_from((-1, (1, 2)))) if len(shape) == 2 else -1
        p["center"] = draw(st.booleans())
        p["scale"] = draw(st.booleans())
    if kind == "act":
        p["activation"] = draw(st.sampled_from(SEQ_ACTIVATIONS))
    if kind in ("mha", "cross"):
        p["num_heads"] = draw(st.integers(1, 3))
        p["key_dim"] = draw(st.sampled_from((4, 2)))
        p["value_dim"] = draw(st.sampled_from((None, 3)))
        p["use_bias"] = draw(st.booleans())
        p["causal"] = draw(st.booleans())
    if kind == "conv1d":
        p["filters"] = draw(st.sampled_from((4, 8, 6)))
        p["kernel_size"] = draw(st.sampled_from((3, 1)))
        p["padding"] = draw(st.sampled_from(("same", "causal")))
        p["groups"] = draw(st.sampled_from((1, 2)))
        p["activation"] = draw(st.sampled_from(FUSABLE))
        p["use_bias"] = draw(st.booleans())
    if kind == "rnn":
        p["cell"] = draw(st.sampled_from(RNNS))
        p["units"] = draw(st.sampled_from((4, 6)))
        p["return_sequences"] = draw(st.booleans())
    return tuple(sorted(p.items()))


@st.composite
def sequence_cases(draw, max_ops=6):
    """A sequence FuzzCase: a random DAG of 1..max_ops ops on a (T, F) float input or on
    int32 token ids (Embedding [+ PositionEmbedding] first), plus a config and schedule.

    Example:
      >>> case = sequence_cases().example()
      >>> build_model(case).input.dtype in ("float32", "int32")
      True
    """
    length = draw(st.sampled_from((4, 6, 5)))
    tokens = draw(st.sampled_from((0, 12)))
    ops = []
    if tokens:
        input_shape = (length,)
        ops.append(OpSpec("embedding", (0,), (("dim", draw(st.sampled_from((8, 4)))),
                                               ("positions", draw(st.booleans())))))
        shapes = [input_shape, (length, dict(ops[0].params)["dim"])]
    else:
        input_shape = (length, draw(st.sampled_from((4, 3, 8))))
        shapes = [input_shape]
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(SEQ_ANY + SEQ_ONLY + SEQ_BINARY))
        back = draw(st.integers(0, len(shapes) - 2 if tokens else len(shapes) - 1))
        first = len(shapes) - 1 - back
        inputs = [first]
        if kind == "add":
            inputs.append(draw(st.sampled_from(
                [i for i, s in enumerate(shapes) if s == shapes[first] and i >= bool(tokens)])))
        elif kind == "cross":
            fits = [i for i, s in enumerate(shapes) if len(s) == 2 and i >= bool(tokens)]
            inputs.append(draw(st.sampled_from(fits)))
        params = draw(_seq_op_params(kind, shapes[first]))
        out = _seq_out_shape(kind, params, [shapes[i] for i in inputs])
        if out is None:
            continue
        ops.append(OpSpec(kind, tuple(inputs), params))
        shapes.append(out)
    config = dict(
        per_channel=draw(st.booleans()),
        weight_bits=draw(st.sampled_from((8, 7, 6, 5, 4))),
        activation_bits=draw(st.sampled_from((8,) * 15 + (7,))),
        quant_delay=draw(st.sampled_from((0, 0, 1, 3))),
        bn_freeze_delay=draw(st.sampled_from((None, 2, 0))),
    )
    return FuzzCase(
        input_shape=input_shape, ops=tuple(ops),
        head=draw(st.sampled_from(("gap_dense", "flatten_dense", "none", "dense_softmax",
                                   "custom_dense"))),
        sequential=draw(st.booleans()), config=config, fit_steps=draw(st.sampled_from((3, 1, 4))),
        calibration=draw(st.sampled_from(("minmax", None, "percentile", "entropy"))),
        seed=draw(st.integers(0, 2**16)), profile="sequence", tokens=tokens)


def _seq_unary_layers(op, index, shape):
    """The layers of a one-input sequence op, applied in a chain."""
    p = dict(op.params)
    name = f"{op.kind}{index}"
    if op.kind == "embedding":
        layers = [L.Embedding(12, p["dim"], name=name)]
        if p["positions"]:
            from tfqat.nn.embedding import PositionEmbedding

            layers.append(PositionEmbedding(name=f"{name}_positions"))
        return layers
    if op.kind == "dense":
        return [L.Dense(p["units"], activation=p["activation"], use_bias=p["use_bias"],
                        name=name)]
    if op.kind == "einsum":
        equation = "abc,cd->abd" if len(shape) == 2 else "ab,bc->ac"
        out_shape = (shape[0], p["units"]) if len(shape) == 2 else p["units"]  # static T
        return [L.EinsumDense(equation, out_shape, activation=p["activation"],
                              bias_axes=equation[-1] if p["bias"] else None, name=name)]
    if op.kind == "cdense":
        return [FuzzDense(p["units"], name=name)]
    if op.kind == "scale":
        return [FuzzScale(name=name)]
    if op.kind == "ln":
        axis = p["axis"] if isinstance(p["axis"], int) else list(p["axis"])
        return [L.LayerNormalization(axis=axis, center=p["center"], scale=p["scale"], name=name)]
    if op.kind == "act":
        return [_activation(p["activation"], name)]
    if op.kind == "dropout":
        return [L.Dropout(0.25, name=name)]
    if op.kind == "conv1d":
        return [L.Conv1D(p["filters"], p["kernel_size"], padding=p["padding"], groups=p["groups"],
                         activation=p["activation"], use_bias=p["use_bias"], name=name)]
    if op.kind == "rnn":
        return [getattr(L, p["cell"])(p["units"], return_sequences=p["return_sequences"],
                                      name=name)]
    if op.kind == "posemb":
        from tfqat.nn.embedding import PositionEmbedding

        return [PositionEmbedding(name=name)]
    if op.kind == "pool":
        return [L.GlobalAveragePooling1D(name=name)]
    if op.kind == "flatten":
        return [L.Flatten(name=name)]
    raise AssertionError(op.kind)


def _attention(op, index, query, value):
    p = dict(op.params)
    layer = L.MultiHeadAttention(p["num_heads"], p["key_dim"], value_dim=p["value_dim"],
                                 use_bias=p["use_bias"], name=f"{op.kind}{index}")
    return layer(query, value, use_causal_mask=p["causal"])


def _seq_head_layers(case, shape):
    if case.head == "none":
        return []
    layers = []
    if len(shape) == 2:
        layers.append(L.GlobalAveragePooling1D(name="head_gap") if case.head != "flatten_dense"
                      else L.Flatten(name="head_flatten"))
    # "custom_dense": the head is the user's FuzzDense (x @ w + b), the usual home of a vector.
    layers.append(FuzzDense(3, name="head_dense") if case.head == "custom_dense"
                  else L.Dense(3, name="head_dense"))
    if case.head == "dense_softmax":
        layers.append(L.Softmax(name="head_softmax"))
    return layers


def build_sequence_model(case: FuzzCase) -> keras.Model:
    """The float model of a sequence case, with random weights and LayerNorm affines."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(case.seed)
    dtype = "int32" if case.tokens else "float32"
    if case.sequential and case.is_chain() and not any(
            op.kind in ("mha",) + SEQ_BINARY for op in case.ops):
        layers = [keras.Input(case.input_shape, dtype=dtype, name="x")]
        shape = case.input_shape
        for index, op in enumerate(case.ops):
            layers += _seq_unary_layers(op, index, shape)
            shape = (shape[0], dict(op.params)["dim"]) if op.kind == "embedding" else \
                _seq_out_shape(op.kind, op.params, [shape])
        layers += _seq_head_layers(case, shape)
        model = keras.Sequential(layers, name="fuzz_sequence_sequential")
    else:
        inp = keras.Input(case.input_shape, dtype=dtype, name="x")
        tensors = [inp]
        for index, op in enumerate(case.ops):
            ins = [tensors[i] for i in op.inputs]
            if op.kind == "add":
                out = L.Add(name=f"add{index}")(ins)
            elif op.kind == "mha":
                out = _attention(op, index, ins[0], ins[0])
            elif op.kind == "cross":
                out = _attention(op, index, ins[0], ins[1])
            else:
                out = ins[0]
                for layer in _seq_unary_layers(op, index, tuple(out.shape[1:])):
                    out = layer(out)
            tensors.append(out)
        out = tensors[-1]
        for layer in _seq_head_layers(case, tuple(out.shape[1:])):
            out = layer(out)
        model = keras.Model(inp, out, name="fuzz_sequence")
    rng = np.random.default_rng(case.seed)
    for layer in _all_layers(model):
        if isinstance(layer, L.LayerNormalization):
            for weight, base in ((layer.gamma, 1.0), (layer.beta, 0.0)):
                if weight is not None:
                    weight.assign(base + rng.normal(0, 0.3, weight.shape).astype("float32"))
        elif isinstance(layer, FuzzScale):
            layer.w.assign(rng.uniform(-1.5, 1.5, layer.w.shape).astype("float32"))
    return model
