"""Rules for Keras ops recorded in a Functional graph (`keras.ops.transpose(x, ...)`, `x[:, 1:]`,
`keras.ops.mean(x, axis=1)`), other than the elementwise ones (see `merges`).

Each op is copied with the same arguments (its config holds them; non-tensor call arguments
such as a slice key stay in the graph node) and gets the scale policy of its int8 TFLite op.
"""

from __future__ import annotations

import keras

from tfqat.nn.keras_op import KerasOpLayer
from tfqat.rewrite.graph import numpy_op
from tfqat.rewrite.rules.merges import ELEMENTWISE_OPS
from tfqat.rewrite.rules.base import (INPUT_SCALE, SCALE_PRESERVING, TRACKED, Replacement,
                                      RewriteRule, Step, clone_layer, keras_op_name)


# Ops that move int8 values without arithmetic, so the output keeps the input's scale:
# STRIDED_SLICE, TRANSPOSE, RESHAPE, EXPAND_DIMS, SPLIT, REDUCE_MAX/MIN, TILE. (max/min with
# `initial` also compare with a constant: not matched.)
SCALE_PRESERVING_OPS = ("GetItem", "Transpose", "Reshape", "ExpandDims", "Squeeze", "Split",
                        "Max", "Min", "Tile", "Repeat")


# Ops whose int8 kernel requantizes an accumulator to an output scale of its own (MEAN, SUM,
# BATCH_MATMUL), so the output gets a tracked range.
OWN_SCALE_OPS = ("Mean", "Sum", "Matmul", "Einsum")


# Own-scale ops whose constant operand is a weight of the TFLite op.
WEIGHT_OPERAND_OPS = ("Matmul", "Einsum")


# Ops whose int8 kernel keeps its input's scale but computes new values: clip is MINIMUM and
# MAXIMUM against constants quantized at the input's scale.
SAME_SCALE_OPS = ("Clip",)


# REVERSE_V2 keeps its input's scale, but the converter leaves it float unless its output has
# a fake quant: the input's quantizer, applied again (tied).
TIED_OPS = ("Flip",)


# int8 CONCATENATION and PACK give every input the output's scale (the concatenation scale
# group of tfqat.rewrite.quantize).
CONCATENATION_OPS = ("Concatenate", "Stack")


# For the refusal of any other Keras op.
SUPPORTED_HINT = ("tfqat quantizes these Keras ops: "
                  + ", ".join(sorted({*SCALE_PRESERVING_OPS, *OWN_SCALE_OPS, *SAME_SCALE_OPS,
                                      *TIED_OPS, *CONCATENATION_OPS, *ELEMENTWISE_OPS}))
                  + ". ")


def _op_in(names):
    def matches(layer) -> bool:
        return keras_op_name(layer) in names
    return matches


def is_scale_preserving_op(layer) -> bool:
    """A Keras op whose int8 TFLite form keeps its input's values and scale.

    Example:
      >>> from tfqat.rewrite.graph import numpy_op
      >>> is_scale_preserving_op(numpy_op("Transpose")), is_scale_preserving_op(numpy_op("Mean"))
      (True, False)
    """
    return keras_op_name(layer) in SCALE_PRESERVING_OPS and getattr(layer, "initial", None) is None


is_own_scale_op = _op_in(OWN_SCALE_OPS)
is_same_scale_keras_op = _op_in(SAME_SCALE_OPS)
is_concatenation_op = _op_in(CONCATENATION_OPS)
is_tied_op = _op_in(TIED_OPS)


def is_concatenation(layer) -> bool:
    """A Concatenate layer or a concatenate/stack Keras op: its inputs take its output's scale.

    Example:
      >>> from tfqat.rewrite.graph import numpy_op
      >>> is_concatenation(keras.layers.Concatenate()), is_concatenation(numpy_op("Stack", axis=1))
      (True, True)
    """
    return type(layer) is keras.layers.Concatenate or is_concatenation_op(layer)


def _layer_name(op) -> str:
    """The QAT layer's name: the op's with "_op" after it. TF names some ops' inner tensors
    after the op (`transpose_1/transpose/perm`), which makes a scope named exactly like a
    layer named "transpose", and op_fidelity could not tell which scope is the layer's."""
    return f"{op.name}_op"


def _as_layer(output):
    """A builder: a copy of the matched op, called as a KerasOpLayer, with policy `output`."""
    def build(match, cfg) -> Replacement:
        op = match["op"]
        return Replacement([KerasOpLayer(clone_layer(op), name=_layer_name(op))], output)
    return build


# clip(x, 0, 6) is RELU6, which the converter fuses into the op before it (a conv, an ADD)
# or runs on its own, requantizing: the clip's output has a scale of its own, as a ReLU6
# layer's does.
RELU6_BOUNDS = (0.0, 6.0)


def _clip_bounds(op):
    return float(op.x_min), float(op.x_max)


def clip_fuses_as_activation(node) -> bool:
    """Whether a graph node is a keras.ops.clip that the converter turns into a TFLite
    activation other than RELU6: clip(x, 0, hi) (max(x, 0) becomes a RELU fused into the
    op before it) or clip(x, -1, 1) (RELU_N1_TO_1). The tensor before the clip then no
    longer exists in the .tflite, and the clip's bound is quantized at that tensor's scale,
    which the QAT model does not reproduce.

    Example:
      >>> inp = keras.Input((4,))
      >>> model = keras.Model(inp, keras.ops.clip(inp, 0.0, 1.0))
      >>> (node,) = tfqat.rewrite.graph.flatten_model(model).nodes
      >>> clip_fuses_as_activation(node)
      True
    """
    if keras_op_name(node.layer) != "Clip":
        return False
    low, high = _clip_bounds(node.layer)
    return (low, high) != RELU6_BOUNDS and (low == 0.0 or (low, high) == (-1.0, 1.0))


def clip_refusal_message(node) -> str:
    op = node.layer
    low, high = _clip_bounds(op)
    return (
        f"Cannot quantize Keras op '{op.name}' (Clip to [{low:g}, {high:g}]): TF's TFLite "
        f"converter fuses this clip into the op before it as a TFLite activation (RELU, "
        f"RELU_N1_TO_1) and quantizes its bound at that op's output scale, which the QAT model "
        f"cannot reproduce. Use keras.layers.ReLU(6.0) or keras.ops.clip(x, 0.0, 6.0) for a "
        f"ReLU6, bounds with low < 0 < high other than [-1, 1] (int8 MAXIMUM and MINIMUM), or "
        f"leave it in float with QuantConfig(exclude=('{op.name}',)).")


def build_own_scale(match, cfg) -> Replacement:
    """A copy of the op with a tracked output range; a constant matrix operand (matmul or
    einsum with a weight) is fake-quantized at `cfg.weight_bits`, symmetric per tensor,
    since the converter makes it an int8 FULLY_CONNECTED/BATCH_MATMUL weight."""
    op = match["op"]
    bits = cfg.weight_bits if keras_op_name(op) in WEIGHT_OPERAND_OPS else None
    layer = KerasOpLayer(clone_layer(op), constant_bits=bits, name=_layer_name(op))
    return Replacement([layer], TRACKED)


def build_clip(match, cfg) -> Replacement:
    """clip(x, 0, 6) as RELU6 with its own scale, other bounds as maximum(x, lo) then
    minimum(., hi), both int8 at the input's scale.

    MAXIMUM and MINIMUM quantize their constant bounds at the input's scale, so the output
    is rounded to that scale (tied). One layer per op gives each its own name scope, so
    op_fidelity finds the MINIMUM's output (the clip's) rather than two same-scale tensors
    in one scope.
    """
    op = match["op"]
    low, high = _clip_bounds(op)
    if (low, high) == RELU6_BOUNDS:
        return Replacement([KerasOpLayer(clone_layer(op), name=_layer_name(op))], TRACKED)
    lower = KerasOpLayer(numpy_op("Maximum"), {"x2": low}, name=f"{op.name}_lower")
    upper = KerasOpLayer(numpy_op("Minimum"), {"x2": high}, name=_layer_name(op))
    return Replacement([lower, upper], INPUT_SCALE)


RULES = (
    RewriteRule("keras_op_scale_preserving", (Step("op", is_scale_preserving_op),),
                _as_layer(SCALE_PRESERVING)),
    RewriteRule("keras_op_own_scale", (Step("op", is_own_scale_op),), build_own_scale),
    RewriteRule("keras_op_tied", (Step("op", is_tied_op),), _as_layer(INPUT_SCALE)),
    RewriteRule("keras_op_clip", (Step("op", is_same_scale_keras_op),), build_clip),
    RewriteRule("keras_op_concatenation", (Step("op", is_concatenation_op),), _as_layer(TRACKED)),
)
