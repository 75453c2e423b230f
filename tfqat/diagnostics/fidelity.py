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

from tfqat.export.reader import quantize, read_dequantized, read_tflite, tensor_details
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.rewrite import graph
from tfqat.rewrite.record import record_of


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
    calls = {op.name: len(graph.calls_of(qat_model, op)) for op in qat_model.operations}
    tensors = _TFLiteTensors(tflite, x, calls)
    diffs, unmatched = [], []
    record = record_of(qat_model)
    for entry in record.quantizers:
        if entry.owner is not None:
            continue  # inside a layer: checked as part of that layer's output
        quantizer = qat_model.get_layer(entry.name)
        # A quantizer called again (tied: the output of a pool that keeps its input's scale)
        # has one tensor per call.
        for call, (call_input, output) in enumerate(graph.calls_of(qat_model, quantizer)):
            name = quantizer.name if call == 0 else f"{quantizer.name} (call {call + 1})"
            if graph.is_model_input(call_input):
                continue  # the .tflite's input is this tensor: nothing computes it
            sources = graph.source_tensors(output, _is_int8_source, stop=False)
            inputs = [tensors.value_of(source, len(x)) for source in sources]
            expected = tensors.value_of(output, len(x))
            if expected is None or any(value is None for value in inputs):
                unmatched.append(name)
                continue
            known = {id(source): value.astype(np.float32) for source, (value, _) in
                     zip(sources, inputs)}
            actual = np.asarray(graph.evaluate(output, known))
            reference, scale = expected
            diff = np.abs(actual.astype(np.float64) - reference) / scale
            diffs.append(OpDiff(name, float(diff.max()), float(diff.mean())))
    diffs.sort(key=lambda d: -d.max_diff_lsb)
    return OpFidelity(tuple(diffs), tuple(unmatched))


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


def _is_int8_source(operation) -> bool:
    """Tensors the .tflite holds as int8: quantizer outputs and model inputs."""
    return isinstance(operation, (ActivationQuantizer, keras.layers.InputLayer))


class _TFLiteTensors:
    """The .tflite run once on `x`, with every intermediate tensor kept."""

    def __init__(self, tflite, x, calls):
        model = read_tflite(tflite)
        self.interpreter = model.interpreter(preserve_all_tensors=True)
        source = model.inputs[0]
        self.interpreter.resize_tensor_input(source.index, x.shape)
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(source.index, quantize(x, source))
        self.interpreter.invoke()
        self.input_index = source.index
        tensors = tensor_details(self.interpreter)  # shapes for this batch
        self.int8 = {t.index: t for t in tensors.values() if t.dtype == "int8"}
        owners = _scope_owners([t.name for t in tensors.values()], calls)
        self.by_layer = {}  # layer name -> int8 tensors named first in its scope
        for t in self.int8.values():
            parts = t.name.split(";")[0].split("/")[:-1]
            layers = {owners[part] for part in parts if part in owners}
            if len(layers) == 1:
                self.by_layer.setdefault(layers.pop(), []).append(t)
        # tensor index -> (index, name) of the op that writes it
        self.producer = {index: (op.index, op.name) for index, op in model.producers.items()}

    def value_of(self, keras_tensor, batch):
        """(dequantized value, scale) of the .tflite tensor for a quantizer output or input.

        None when no int8 tensor of the producing layer's name scope has its size.
        """
        if graph.is_model_input(keras_tensor) or graph.is_model_input(graph.input_of(keras_tensor)):
            index = self.input_index  # the .tflite's input is the input quantizer's output
        else:
            # A quantizer's tensor is the output of the layer that feeds the quantizer.
            layer = graph.producer_of(graph.input_of(keras_tensor))
            shape = (batch, *keras_tensor.shape[1:])
            in_scope = self.by_layer.get(layer.name, [])
            # The converter may merge a trailing reshape (Conv1D's squeeze) into the next op's:
            # then the layer's tensor exists only in its op layout, with the same values.
            found = ([t.index for t in in_scope if t.shape == shape] or
                     [t.index for t in in_scope if np.prod(t.shape) == np.prod(shape)])
            # A QUANTIZE in the layer's scope is a copy the converter requantized for one
            # consumer (a CONCATENATION's shared scale), not the layer's own tensor.
            found = [i for i in found if self.producer.get(i, (0, ""))[1] != "QUANTIZE"] or found
            if not found:
                return None
            # Several ops of one layer (a decomposed activation): its last op writes the output.
            index = max(found, key=lambda i: self.producer.get(i, (-1, ""))[0])
        if index not in self.int8:  # a float input: nothing to compare in LSBs
            return None
        tensor = self.int8[index]
        value = read_dequantized(self.interpreter, tensor)
        return value.reshape((batch, *keras_tensor.shape[1:])), tensor.scale
