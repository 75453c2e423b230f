"""Rules for merges: Add/Subtract/Multiply/Concatenate layers and the elementwise Keras ops
recorded in a Functional graph (`x + 3.0`), with an optional ReLU after them."""

from __future__ import annotations

import keras

from tfqat.rewrite.graph import TensorRef
from tfqat.rewrite.rules.activations import RELU_TAIL
from tfqat.nn.merges import QuantAverage
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step, build_tracked, keras_op_name


# (Average is its own rule: ADD then MUL, with a fake quant on the sum; see tfqat.nn.merges.)
MERGE_TYPES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
               keras.layers.Concatenate)


# Keras ops recorded in a Functional graph (`x + 3.0`, `a * b`): ADD/SUB/MUL with a tensor or
# a scalar constant are int8 ops (the converter quantizes a constant operand itself); a
# division by a constant becomes MUL. TFLite has no int8 DIV, so any other division is
# refused (see divides_by_tensor).
ELEMENTWISE_OPS = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide")


DIVISION_OPS = ("Divide", "TrueDivide")


# int8 MAXIMUM and MINIMUM keep one scale for their inputs and output (quantize_model rounds
# their inputs to the output's quantizer, as for a concatenation).
MAX_MIN_TYPES = (keras.layers.Maximum, keras.layers.Minimum)


# Merge layers that TFLite runs as binary int8 ops: with more inputs, the converter chains
# them and the intermediate sums or products stay float.
BINARY_MERGE_TYPES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
                      *MAX_MIN_TYPES)


def is_merge(layer) -> bool:
    """A merge layer (Add, Subtract, Multiply, Concatenate) or an elementwise Keras op."""
    return type(layer) in MERGE_TYPES or keras_op_name(layer) in ELEMENTWISE_OPS


def divides_by_tensor(node) -> bool:
    """Whether a graph node (tfqat.rewrite.graph.Node) is a Keras division op that is not tensor / constant.

    Only a tensor divided by a constant is an int8 op (the converter makes it
    MUL by the reciprocal); `a / b` or `2.0 / x` is DIV, which TFLite runs in
    float only.

    Example:
      >>> inp = keras.Input((4,))
      >>> (node,) = tfqat.rewrite.graph.flatten_model(keras.Model(inp, inp / inp)).nodes
      >>> divides_by_tensor(node)
      True
    """
    if keras_op_name(node.layer) not in DIVISION_OPS:
        return False
    operands = [*node.args, *(node.kwargs[key] for key in ("x1", "x2") if key in node.kwargs)]
    dividend, divisor = operands[:2]
    return not isinstance(dividend, TensorRef) or isinstance(divisor, TensorRef)


def merges_more_than_two(node) -> bool:
    """Whether a graph node is an Add/Multiply (or Subtract) of more than two tensors.

    Example:
      >>> a, b, c = (keras.Input((4,)) for _ in range(3))
      >>> model = keras.Model([a, b, c], keras.layers.Add()([a, b, c]))
      >>> merges_more_than_two(tfqat.rewrite.graph.flatten_model(model).nodes[0])
      True
    """
    if type(node.layer) not in BINARY_MERGE_TYPES or not node.args:
        return False
    inputs = node.args[0]
    return isinstance(inputs, (list, tuple)) and len(inputs) > 2


def is_max_min(layer) -> bool:
    """Maximum or Minimum (exact class): int8 MAXIMUM/MINIMUM, one scale for inputs and output.

    Example:
      >>> is_max_min(keras.layers.Maximum()), is_max_min(keras.layers.Add())
      (True, False)
    """
    return type(layer) in MAX_MIN_TYPES


def is_average(layer) -> bool:
    """Average (exact class)."""
    return type(layer) is keras.layers.Average


def build_average(match, cfg) -> Replacement:
    """Average as int8 ADDs (each sum fake-quantized) then MUL by 1 / n, then a tracked fake quant.

    Example:
      >>> r = build_average({"merge": keras.layers.Average(name="avg")}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('QuantAverage', 'tracked')
    """
    average = match["merge"]
    layer = QuantAverage(activation_bits=cfg.activation_bits,
                         ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay, name=average.name)
    return Replacement([layer], TRACKED)


def is_concatenate(layer) -> bool:
    """Concatenate (exact class)."""
    return type(layer) is keras.layers.Concatenate


RULES = (
    # CONCATENATION has no fused activation: a ReLU after it is its own op (with a tail,
    # the converter leaves CONCATENATION and RELU float).
    RewriteRule("concatenate", (Step("merge", is_concatenate),), build_tracked, True),
    RewriteRule("merge_relu", (Step("merge", is_merge), RELU_TAIL), build_tracked, True),
    # MAXIMUM/MINIMUM have no fused activation either.
    RewriteRule("max_min", (Step("merge", is_max_min),), build_tracked, True),
    RewriteRule("average", (Step("merge", is_average),), build_average),
)
