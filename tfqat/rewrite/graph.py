"""A flat, editable view of a Keras Functional/Sequential model graph.

Keras graphs are nested (a Functional model can be a layer of another) and
their tensors are immutable KerasTensors. `flatten_model` turns a model into a
list of `Node`s over integer tensor ids, nested models expanded in place, so
that rewrite rules can match chains of layers and insert new nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import tree
from keras.src.models.functional import Functional  # the base of tfqat's QATModel
from keras.src.ops import numpy as numpy_ops  # the Keras op classes (keras.ops.minimum's Minimum)


class GraphError(ValueError):
    """The model cannot be read as a layer graph."""


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Stands for tensor `id` inside a node's argument structure."""

    id: int


@dataclasses.dataclass
class Node:
    """One layer call: `layer(*args, **kwargs)` with TensorRef leaves."""

    layer: Any
    args: Any
    kwargs: dict
    outputs: list
    config_name: str = ""  # the original layer whose QuantConfig settings apply
    scope: str = ""  # "outer/" for a layer of nested model "outer"

    def __post_init__(self):
        self.config_name = self.config_name or self.layer.name

    @property
    def float_name(self) -> str:
        """The original float layer's name, nested models' names in front ("outer/conv")."""
        return f"{self.scope}{self.config_name}"

    @property
    def inputs(self) -> list:
        return [ref.id for ref in tree.flatten((self.args, self.kwargs)) if isinstance(ref, TensorRef)]


@dataclasses.dataclass
class InputSpec:
    id: int
    shape: tuple
    dtype: str
    name: str


@dataclasses.dataclass
class Graph:
    inputs: list  # of InputSpec
    nodes: list  # of Node, in topological order
    outputs: Any  # structure of tensor ids
    shapes: dict  # tensor id -> shape (batch dim included)
    next_id: int = 0
    num_original: int = 0  # ids below this are tensors of the float model

    def is_original(self, tid: int) -> bool:
        """Whether tensor `tid` is a tensor of the float model (not one a rewrite made)."""
        return tid < self.num_original

    def producer(self, tid: int):
        """The node that computes tensor `tid`, or None for a model input."""
        for node in self.nodes:
            if tid in node.outputs:
                return node
        return None

    def new_tensor(self, shape) -> int:
        tid = self.next_id
        self.next_id += 1
        self.shapes[tid] = tuple(shape)
        return tid

    def output_ids(self) -> list:
        return list(tree.flatten(self.outputs))

    def consumers(self, tid: int) -> list:
        return [node for node in self.nodes if tid in node.inputs]

    def layer_names(self) -> set:
        return {node.config_name for node in self.nodes} | {spec.name for spec in self.inputs}


def functional_of(model):
    """The Functional graph behind `model`, or a clear error for other models."""
    if isinstance(model, keras.Sequential):
        if not model.built or getattr(model, "_functional", None) is None:
            raise GraphError(
                f"Model '{model.name}' is not built: give its first layer an input "
                "shape (keras.Input(...)) or call model.build(input_shape) first.")
        return model._functional
    if _is_functional(model):
        return model
    if isinstance(model, keras.Model):
        raise GraphError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model, so its "
            "layer graph cannot be read. Rebuild it with the Functional API "
            "(keras.Model(inputs, outputs)) or as keras.Sequential.")
    raise GraphError(f"Expected a keras.Model, got {type(model).__name__}.")


def _is_functional(model) -> bool:
    return isinstance(model, Functional) and not isinstance(model, keras.Sequential)


def _is_nested_model(op) -> bool:
    return isinstance(op, keras.Model)


def flatten_model(model) -> Graph:
    """Reads `model` into a Graph, expanding nested Sequential/Functional models.

    Example:
      >>> inp = keras.Input((4,))
      >>> g = flatten_model(keras.Model(inp, keras.layers.Dense(2)(inp)))
      >>> [n.layer.name for n in g.nodes]
      ['dense']
    """
    functional = functional_of(model)
    graph = Graph(inputs=[], nodes=[], outputs=None, shapes={})
    ids = {}  # id(KerasTensor) -> tensor id
    for tensor in functional.inputs:
        tid = graph.new_tensor(tensor.shape)
        ids[id(tensor)] = tid
        graph.inputs.append(InputSpec(tid, tuple(tensor.shape), tensor.dtype,
                                      tensor._keras_history[0].name))
    _append_nodes(functional, graph, ids, prefix="")
    graph.outputs = tree.map_structure(lambda t: ids[id(t)], functional._outputs_struct)
    graph.num_original = graph.next_id
    return graph


def _append_nodes(functional, graph, ids, prefix):
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            op = node.operation
            if _is_nested_model(op):
                inner = functional_of(op)
                outer_inputs = [ids[id(t)] for t in node.input_tensors]
                if len(outer_inputs) != len(inner.inputs):
                    raise GraphError(f"Nested model '{op.name}' is called with "
                                     f"{len(outer_inputs)} inputs but has {len(inner.inputs)}.")
                for inner_input, tid in zip(inner.inputs, outer_inputs):
                    ids[id(inner_input)] = tid
                _append_nodes(inner, graph, ids, prefix=f"{prefix}{op.name}/")
                for outer, inner_out in zip(node.outputs, inner.outputs):
                    ids[id(outer)] = ids[id(inner_out)]
                continue

            def to_ref(value):
                if isinstance(value, keras.KerasTensor):
                    return TensorRef(ids[id(value)])
                return value

            args = tree.map_structure(to_ref, node.arguments.args)
            kwargs = {k: tree.map_structure(to_ref, v) for k, v in node.arguments.kwargs.items()
                      if k not in ("training", "mask")}
            outputs = []
            for tensor in node.outputs:
                tid = graph.new_tensor(tensor.shape)
                ids[id(tensor)] = tid
                outputs.append(tid)
            graph.nodes.append(Node(op, args, kwargs, outputs, scope=prefix))


def substitute(structure, values: dict):
    """Replaces every TensorRef leaf of `structure` by `values[ref.id]`."""
    return tree.map_structure(
        lambda leaf: values[leaf.id] if isinstance(leaf, TensorRef) else leaf, structure)


def output_of(model, name: str):
    """The output of layer (or input) `name` of Functional `model` if it is one tensor of one
    call, else None. Nested names ("outer/inner") are not tensors of `model`: None.

    Example:
      >>> output_of(float_model, "conv1").shape
      (None, 26, 26, 8)
    """
    for tensor in functional_of(model).inputs:
        if tensor._keras_history.operation.name == name:
            return tensor
    try:
        layer = model.get_layer(name)
    except ValueError:
        return None
    own = own_nodes(model)
    nodes = [node for node in layer._inbound_nodes if id(node) in own]
    if len(nodes) != 1:
        return None  # a shared layer: which call is meant is unclear
    outputs = tree.flatten(nodes[0].output_tensors)
    return outputs[0] if len(outputs) == 1 else None


def own_nodes(model) -> set:
    """ids of the call nodes that belong to `model` (a layer may also have nodes of other
    models that call it, such as probes built for calibration)."""
    functional = functional_of(model)
    return {id(node) for nodes in functional._nodes_by_depth.values() for node in nodes}


def producer_of(tensor):
    """The layer (or Keras op) whose call made symbolic `tensor`."""
    return tensor._keras_history.operation


def _call_node(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def input_of(tensor):
    """The (first) input tensor of the call that made symbolic `tensor`."""
    return _call_node(tensor).input_tensors[0]


def parents_of(tensor) -> list:
    """The input tensors of the call that made symbolic `tensor` (none for a model input)."""
    if is_model_input(tensor):
        return []
    return list(_call_node(tensor).input_tensors)


def is_model_input(tensor) -> bool:
    return isinstance(producer_of(tensor), keras.layers.InputLayer)


def calls_of(model, layer) -> list:
    """(first input, first output) of each call of `layer` in `model`, in call order."""
    own = own_nodes(model)
    return [(node.input_tensors[0] if node.input_tensors else None, node.output_tensors[0])
            for node in layer._inbound_nodes if id(node) in own]


def source_tensors(tensor, is_source, stop=True) -> list:
    """The nearest tensors that `tensor` is computed from and that pass `is_source`.

    With stop=False, `tensor` itself is not a source even if it passes.
    """
    if stop and is_source(tensor):
        return [tensor]
    sources = []
    for parent in parents_of(tensor):
        for source in source_tensors(parent, is_source):
            if not any(source is known for known in sources):
                sources.append(source)
    return sources


def evaluate(tensor, known, call=None):
    """The value of a graph tensor, computed from `known` ({id(tensor): value}) in inference mode.

    Walks the model's own nodes; a sub-model (keras.Model(sources, output)) would add nodes
    to the layers it calls. `call(operation, args, kwargs)`, if given, runs each operation.
    """
    if id(tensor) not in known:
        operation = producer_of(tensor)
        node = _call_node(tensor)

        def resolve(value):
            return evaluate(value, known, call) if isinstance(value, keras.KerasTensor) else value

        args = tree.map_structure(resolve, node.arguments.args)
        kwargs = {key: tree.map_structure(resolve, value)
                  for key, value in node.arguments.kwargs.items() if key not in ("training", "mask")}
        if isinstance(operation, keras.layers.Layer):
            kwargs["training"] = False
        result = call(operation, args, kwargs) if call else operation(*args, **kwargs)
        for output, value in zip(node.outputs, tree.flatten(result)):
            known[id(output)] = value
    return known[id(tensor)]


def all_layers(model) -> list:
    """Every layer inside `model`, nested layers and models included (not `model` itself)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def keras_op_name(op) -> str | None:
    """The class name of a Keras numpy op recorded in a graph (`x + 3.0` is "Add"), else None.

    Example:
      >>> inp = keras.Input((4,))
      >>> graph = flatten_model(keras.Model(inp, inp + 3.0))
      >>> keras_op_name(graph.nodes[0].layer), keras_op_name(keras.layers.Add())
      ('Add', None)
    """
    if isinstance(op, keras.layers.Layer) or type(op).__module__ != "keras.src.ops.numpy":
        return None
    return type(op).__name__


def copy_lambda(layer, dtype=None):
    """A new Lambda layer around the same function as `layer` (from_config cannot rebuild a
    Python lambda, and refuses one in safe mode), with `dtype` (default: the same policy)."""
    return keras.layers.Lambda(
        layer.function, output_shape=layer._output_shape, mask=layer.mask,
        arguments=layer.arguments, name=layer.name, trainable=layer.trainable,
        dtype=layer.dtype_policy if dtype is None else dtype)


def untied_call(layer):
    """(input, output) of the first call of `layer` not made with tied=True: the call of an
    ActivationQuantizer that tracks its range (tied calls round other tensors to its scale,
    some of them before it: the inputs of a Concatenate)."""
    for node in layer._inbound_nodes:
        if not node.arguments.kwargs.get("tied", False):
            return node.input_tensors[0], node.output_tensors[0]
    raise ValueError(f"Layer '{layer.name}' has no untied call.")


def defined_in_keras(layer, package: str) -> bool:
    """Whether `layer`'s class is Keras's own, from its (private) `package`, e.g.
    "applications" for keras.applications' internal layers (ConvNeXt's LayerScale)."""
    return type(layer).__module__.startswith(f"keras.src.{package}")


def attention_output_shape(layer):
    """A MultiHeadAttention's `output_shape` argument (Keras keeps it only privately)."""
    return layer._output_shape


def numpy_op(name: str, **config):
    """A new Keras numpy op of class `name` (keras.ops.minimum's is "Minimum"), made with
    `config`: for a rule that replaces an op by others.

    Example:
      >>> numpy_op("Minimum")(keras.ops.ones((2,)), 0.5)
      <tf.Tensor: shape=(2,), dtype=float32, numpy=array([0.5, 0.5], dtype=float32)>
    """
    return getattr(numpy_ops, name)(**config)
