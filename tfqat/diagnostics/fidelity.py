"""Op-by-op fidelity: does the QAT model compute what each int8 op of the .tflite computes?

An end-to-end comparison (`tfqat.diagnostics.evaluation.compare_to_model`) mixes two
things: how exactly the QAT model simulates each integer op, and how much the
network amplifies the last-bit rounding differences between float and
fixed-point arithmetic. A deep net with random weights and BatchNorm amplifies
them a lot (a 1-LSB difference in 0.3% of one tensor's values grows to tens of
output LSBs over 50 layers), so its end-to-end figures say little about the
simulation. `op_fidelity` takes the amplification out: for every activation
quantizer it runs the QAT layers between the preceding quantizers and this one
on the .tflite's own int8 tensors (dequantized), and compares the result with
the .tflite's tensor, in that tensor's LSBs. An exact simulation is within
1 LSB everywhere (float rounding ties).

The .tflite tensor of a quantizer is found by name: TFLite names an op's
output after the TF ops it fused, which carry the Keras layer's name scope
(`model/conv1_1/Relu6;...`). The scope is the layer's name, made unique in the
traced graph by a suffix, so a scope can look like several layers' (`conv2d_1`
is layer conv2d's scope or layer conv2d_1's): see `_scope_owners`. Quantizers
whose tensors cannot be found that way are listed in `unmatched`, not
compared.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from tfqat.diagnostics.evaluation import quantize_input
from tfqat.export.reader import load_interpreter
from tfqat.nn.composite import CompositeQuantLayer, replay_inner_tensors
from tfqat.nn.quantizers import ActivationQuantizer


@dataclasses.dataclass(frozen=True)
class OpDiff:
    """One quantizer's tensor: |QAT - .tflite| in that tensor's LSBs."""

    quantizer: str
    max_diff_lsb: float
    mean_diff_lsb: float


@dataclasses.dataclass(frozen=True)
class OpFidelity:
    """What `op_fidelity` returns: one OpDiff per compared quantizer, worst first."""

    diffs: tuple
    unmatched: tuple  # quantizer names whose .tflite tensors were not found

    @property
    def max_diff_lsb(self) -> float:
        return max((d.max_diff_lsb for d in self.diffs), default=0.0)

    @property
    def num_checked(self) -> int:
        return len(self.diffs)

    def __str__(self) -> str:
        total = len(self.diffs) + len(self.unmatched)
        lines = [f"op-by-op: {len(self.diffs)}/{total} quantized tensors compared, "
                 f"max diff {self.max_diff_lsb:.2f} LSB"]
        lines += [f"  {d.quantizer}: max {d.max_diff_lsb:.2f} LSB, mean {d.mean_diff_lsb:.4f}"
                  for d in self.diffs[:5]]
        if self.unmatched:
            lines.append(f"  not found in the .tflite: {', '.join(self.unmatched)}")
        return "\n".join(lines)


def op_fidelity(qat_model, tflite, x) -> OpFidelity:
    """Compares every activation quantizer's tensor with the .tflite's, op by op.

    `qat_model` must have one input; `x` is a batch of float inputs.

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat)
      >>> result = op_fidelity(qat, flatbuffer, x_test[:8])
      >>> result.max_diff_lsb <= 1.0, result.num_checked
      (True, 12)
    """
    if len(qat_model.inputs) != 1:
        raise ValueError(f"op_fidelity needs a model with one input; '{qat_model.name}' has "
                         f"{len(qat_model.inputs)}.")
    x = np.asarray(x, np.float32)
    # A layer may have nodes of other models (calibration probes): only this model's count.
    own_nodes = {id(node) for nodes in qat_model._nodes_by_depth.values() for node in nodes}
    calls = {op.name: sum(id(node) in own_nodes for node in op._inbound_nodes)
             for op in qat_model.operations}
    tensors = _TFLiteTensors(tflite, x, calls)
    diffs, unmatched = [], []
    # Layers with inner int8 tensors (tfqat.nn.composite) replay the .tflite's inner tensors,
    # so each inner op and the last one are compared on their own.
    replays = {}
    for layer in qat_model.layers:
        if isinstance(layer, CompositeQuantLayer):
            inner = tensors.inner_values(layer)
            if inner is None:
                unmatched.extend(name for _, name in layer.inner_tensors)
            else:
                replays[layer.name] = {"expected": inner, "computed": None}
    for quantizer in qat_model.layers:
        if not isinstance(quantizer, ActivationQuantizer):
            continue
        # A quantizer called again (tied: the output of a pool that keeps its input's scale)
        # has one tensor per call.
        nodes = [node for node in quantizer._inbound_nodes if id(node) in own_nodes]
        for call, node in enumerate(nodes):
            output = node.output_tensors[0]
            name = quantizer.name if call == 0 else f"{quantizer.name} (call {call + 1})"
            if _is_model_input(node.input_tensors[0]):
                continue  # the .tflite's input is this tensor: nothing computes it
            sources = _source_tensors(output, stop=False)
            inputs = [tensors.value_of(source, len(x)) for source in sources]
            expected = tensors.value_of(output, len(x))
            if expected is None or any(value is None for value in inputs):
                unmatched.append(name)
                continue
            known = {id(source): value if value.dtype.kind in "iu" else value.astype(np.float32)
                     for source, (value, _) in zip(sources, inputs)}
            actual = np.asarray(_evaluate(output, known, replays))
            reference, scale = expected
            diff = np.abs(actual.astype(np.float64) - reference) / scale
            diffs.append(OpDiff(name, float(diff.max()), float(diff.mean())))
    for layer_name, replay in replays.items():
        for quantizer_name, (reference, scale) in replay["expected"].items():
            if replay["computed"] is None or quantizer_name not in replay["computed"]:
                unmatched.append(quantizer_name)
                continue
            actual = replay["computed"][quantizer_name].astype(np.float64)
            diff = np.abs(actual.reshape(reference.shape) - reference) / scale
            diffs.append(OpDiff(quantizer_name, float(diff.max()), float(diff.mean())))
    diffs.sort(key=lambda d: -d.max_diff_lsb)
    return OpFidelity(tuple(diffs), tuple(unmatched))


def _history(tensor):
    return tensor._keras_history


def _input_of(tensor):
    """The (first) input tensor of the call that produced `tensor`."""
    operation, node_index, _ = _history(tensor)
    return operation._inbound_nodes[node_index].input_tensors[0]


def _is_model_input(tensor) -> bool:
    return isinstance(_history(tensor)[0], keras.layers.InputLayer)


def _source_tensors(tensor, stop=True) -> list:
    """The quantizer outputs and model inputs that `tensor` is computed from.

    With stop=False, `tensor` itself is not a source even if a quantizer made it.
    """
    operation, node_index, _ = _history(tensor)
    if stop and isinstance(operation, (ActivationQuantizer, keras.layers.InputLayer)):
        return [tensor]
    sources = []
    for parent in operation._inbound_nodes[node_index].input_tensors:
        for source in _source_tensors(parent):
            if not any(source is known for known in sources):
                sources.append(source)
    return sources


def _scope_owners(tensor_names, calls) -> dict:
    """{name scope: layer name} for the scopes in `tensor_names` that are surely one layer's.

    TF names the scope of a layer call after the layer, made unique in the
    traced graph by a suffix `_<n>`: layer conv2d's scope may be `conv2d_1`
    while layer conv2d_1's is `conv2d_1_2`. So a scope is a layer's name with
    or without one such suffix, and each call (`calls`: layer name -> calls in
    the model) makes one scope. A scope that fits one layer only is that
    layer's; the others are settled by elimination (a layer whose calls all
    have scopes takes no more). A scope still ambiguous belongs to no layer:
    its tensors are never compared with the wrong layer.

    Example:
      >>> _scope_owners(["m/conv2d_1/Conv2D", "m/conv2d_1_2/Conv2D"], {"conv2d": 1, "conv2d_1": 1})
      {'conv2d_1_2': 'conv2d_1', 'conv2d_1': 'conv2d'}
    """
    scopes = {part for name in tensor_names for full in name.split(";")
              for part in full.split("/")[:-1]}
    candidates = {}
    for scope in scopes:
        names = {scope, re.sub(r"_\d+$", "", scope)} & calls.keys()
        if names:
            candidates[scope] = names
    left = dict(calls)
    owners = {}
    settled = True
    while settled:
        settled = False
        for scope in sorted(candidates):
            live = [name for name in candidates[scope] if left[name] > 0]
            if len(live) <= 1:
                del candidates[scope]
            if len(live) == 1:
                owners[scope] = live[0]
                left[live[0]] -= 1
                settled = True
    return owners


def _evaluate(tensor, known, replays=None):
    """The value of a graph tensor, computed from `known` ({id(tensor): value}) in inference mode.

    Walks the model's own nodes; a sub-model (keras.Model(sources, output)) would add nodes
    to the layers it calls. `replays`: {composite layer name: {"expected": {inner quantizer:
    (value, scale)}, "computed": None}}; such a layer runs on the expected inner values and
    stores what it computed.
    """
    if id(tensor) not in known:
        operation, node_index, _ = _history(tensor)
        node = operation._inbound_nodes[node_index]

        def resolve(value):
            return _evaluate(value, known, replays) if isinstance(value, keras.KerasTensor) \
                else value

        args = keras.tree.map_structure(resolve, node.arguments.args)
        kwargs = {key: keras.tree.map_structure(resolve, value)
                  for key, value in node.arguments.kwargs.items() if key not in ("training", "mask")}
        if isinstance(operation, keras.layers.Layer):
            kwargs["training"] = False
        replay = (replays or {}).get(getattr(operation, "name", None))
        if replay is not None:
            substitutes = {name: value for name, (value, _) in replay["expected"].items()}
            with replay_inner_tensors(substitutes) as computed:
                result = operation(*args, **kwargs)
            replay["computed"] = computed
        else:
            result = operation(*args, **kwargs)
        for output, value in zip(node.outputs, keras.tree.flatten(result)):
            known[id(output)] = value
    return known[id(tensor)]


class _TFLiteTensors:
    """The .tflite run once on `x`, with every intermediate tensor kept."""

    def __init__(self, tflite, x, calls):
        self.interpreter = load_interpreter(tflite, preserve_all_tensors=True)
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(detail["index"], x.shape)
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(detail["index"], quantize_input(x, detail))
        self.interpreter.invoke()
        self.input_index = detail["index"]
        self.input_dtype = np.dtype(detail["dtype"])
        self.details = [d for d in self.interpreter.get_tensor_details() if d["dtype"] == np.int8]
        owners = _scope_owners([d["name"] for d in self.interpreter.get_tensor_details()], calls)
        self.by_layer = {}  # layer name -> int8 tensors named first in its scope
        for d in self.details:
            parts = d["name"].split(";")[0].split("/")[:-1]
            layers = {owners[part] for part in parts if part in owners}
            if len(layers) == 1:
                self.by_layer.setdefault(layers.pop(), []).append(d)
        self.quantization = {d["index"]: d["quantization"] for d in self.details}
        self.producer = {}  # tensor index -> (index, name) of the op that writes it
        for op in self.interpreter._get_ops_details():
            for index in op["outputs"]:
                self.producer[index] = (op["index"], op["op_name"])

    def inner_values(self, layer):
        """{inner tensor name: (dequantized value, scale)} of a composite layer, or None.

        Each inner tensor is the last int8 tensor written (not by a QUANTIZE) in the name
        scope of its tag inside the layer's scope (tfqat.nn.composite). None when one of them
        is missing.
        """
        in_scope = [d for d in self.by_layer.get(layer.name, [])
                    if d["index"] in self.producer and self.producer[d["index"]][1] != "QUANTIZE"]
        values = {}
        for tag, name in layer.inner_tensors:
            found = [d["index"] for d in in_scope if tag in d["name"].split(";")[0].split("/")[:-1]]
            if not found:
                return None
            index = max(found, key=lambda i: self.producer[i][0])
            scale, zero_point = self.quantization[index]
            values[name] = (
                (self.interpreter.get_tensor(index).astype(np.float64) - zero_point) * scale, scale)
        return values

    def value_of(self, keras_tensor, batch):
        """(dequantized value, scale) of the .tflite tensor for a quantizer output or input.

        None when no int8 tensor of the producing layer's name scope has its size.
        """
        if _is_model_input(keras_tensor) or _is_model_input(_input_of(keras_tensor)):
            index = self.input_index  # the .tflite's input is the input quantizer's output
        else:
            # A quantizer's tensor is the output of the layer that feeds the quantizer.
            layer = _history(_input_of(keras_tensor))[0]
            shape = (batch, *keras_tensor.shape[1:])
            in_scope = self.by_layer.get(layer.name, [])
            # The converter may merge a trailing reshape (Conv1D's squeeze) into the next op's:
            # then the layer's tensor exists only in its op layout, with the same values.
            found = ([d["index"] for d in in_scope if tuple(d["shape"]) == shape] or
                     [d["index"] for d in in_scope if np.prod(d["shape"]) == np.prod(shape)])
            # A QUANTIZE in the layer's scope is a copy the converter requantized for one
            # consumer (a CONCATENATION's shared scale), not the layer's own tensor.
            found = [i for i in found if self.producer.get(i, (0, ""))[1] != "QUANTIZE"] or found
            if not found:
                return None
            # Several ops of one layer (a decomposed activation): its last op writes the output.
            index = max(found, key=lambda i: self.producer.get(i, (-1, ""))[0])
        if index == self.input_index and index not in self.quantization and \
                self.input_dtype.kind in "iu":
            return self.interpreter.get_tensor(index), 1.0  # token ids, as they are
        if index not in self.quantization:  # a float input: nothing to compare in LSBs
            return None
        scale, zero_point = self.quantization[index]
        value = (self.interpreter.get_tensor(index).astype(np.float64) - zero_point) * scale
        return value.reshape((batch, *keras_tensor.shape[1:])), scale
