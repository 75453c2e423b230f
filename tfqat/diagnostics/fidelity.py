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

The .tflite tensor of a quantizer is found by its quantization: the int8
tensor with the quantizer's scale and zero point and its number of values.
Where several tensors qualify (two sigmoids, both at scale 1/256; the inputs
of a concatenation, which share its scale), the one computed from the tensors
of the quantizer's own sources is taken, then the one in the layer's name
scope (TFLite names an op's output after the TF ops it fused,
`model/conv1_1/Relu6;...`; see `_scope_owners`); if they still differ in
value, the quantizer is `unmatched`, never compared with the wrong tensor. A quantizer whose tensor no longer exists because the converter fused
its op into the next one (a ReLU into the MUL of a swish, a MUL by a positive
constant into the conv before it) is listed in `fused`; the next quantizer is
then computed from the tensors before it. A quantizer with no
tensor that no compared tensor is computed through (a model output, or a
.tflite whose scales differ from the QAT model's) is `unmatched`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from tfqat.inputs import check_inputs
from tfqat.export.reader import quantize, read_dequantized, read_tflite, tensor_details
from tfqat.rewrite import graph
from tfqat.rewrite.record import record_of
from tfqat.nn.composite import CompositeQuantLayer, replay_inner_tensors


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
    unmatched: tuple  # quantizer names whose .tflite tensors could not be told apart
    fused: tuple = ()  # quantizer names whose tensors the converter fused into the next op

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
        if self.fused:
            lines.append(f"  fused into the next op by the converter: {', '.join(self.fused)}")
        return "\n".join(lines)


def op_fidelity(qat_model, tflite, x, kernels: str = "builtin") -> OpFidelity:
    """Compares every activation quantizer's tensor with the .tflite's, op by op.

    `x` is a batch of float inputs: an array, or for several inputs a list (Keras input
    order) or a dict keyed by input name. `kernels`: the LiteRT kernels whose tensors are
    compared, "builtin" or "reference" (XNNPACK keeps no intermediate tensors).

    Example:
      >>> flatbuffer = tfqat.export_tflite(qat)
      >>> result = op_fidelity(qat, flatbuffer, x_test[:8])
      >>> result.max_diff_lsb <= 1.0, result.num_checked
      (True, 12)
    """
    if kernels not in ("builtin", "reference"):
        raise ValueError(f"op_fidelity: kernels={kernels!r}; use 'builtin' or 'reference' "
                         "(XNNPACK keeps no intermediate tensors to compare).")
    x = check_inputs(qat_model, x, "x", "op_fidelity")
    inputs = x if isinstance(x, list) else [x]
    count = len(inputs[0])
    calls = {op.name: len(graph.calls_of(qat_model, op)) for op in qat_model.operations}
    names = [graph.producer_of(t).name for t in qat_model.inputs]
    tensors = _TFLiteTensors(tflite, dict(zip(names, inputs)), calls, kernels)
    quantizer_calls = []  # (name, quantizer, call input, call output)
    unmatched_inner = []
    for entry in record_of(qat_model).quantizers:
        if entry.owner is not None:
            continue  # inside a layer: checked as part of that layer's output
        quantizer = qat_model.get_layer(entry.name)
        # A quantizer called again (tied: the output of a pool that keeps its input's scale)
        # has one tensor per call.
        for call, (call_input, output) in enumerate(graph.calls_of(qat_model, quantizer)):
            name = quantizer.name if call == 0 else f"{quantizer.name} (call {call + 1})"
            quantizer_calls.append((name, quantizer, call_input, output))
    # Layers with inner int8 tensors (tfqat.nn.composite) replay the .tflite's inner tensors,
    # so each inner op and the last one are compared on their own. Found first: a tensor that
    # is a composite's inner tensor is not the output of a quantizer after it.
    replays = {}
    fused_inner = []
    for layer in qat_model.layers:
        if isinstance(layer, CompositeQuantLayer):
            inner = tensors.inner_values(layer)
            if inner is None:
                unmatched_inner.extend(name for _, name in layer.inner_tensors)
            else:
                replays[layer.name] = {"expected": inner, "computed": None}
                # An inner op the converter removed (ConvNeXt's MUL by an all-ones gamma) has
                # no tensor: the next inner tensor is computed through it.
                fused_inner.extend(name for _, name in layer.inner_tensors if name not in inner)
    located = tensors.locate(quantizer_calls, count)  # id(output) -> index | None | AMBIGUOUS

    def replaying(operation, args, kwargs):
        replay = replays.get(getattr(operation, "name", None))
        if replay is None:
            return operation(*args, **kwargs)
        substitutes = {name: value for name, (value, _) in replay["expected"].items()}
        with replay_inner_tensors(substitutes) as computed:
            result = operation(*args, **kwargs)
        replay["computed"] = computed
        return result

    def source_index(tensor):
        if graph.is_model_input(tensor):  # token ids: an int32 input without a quantizer
            return tensors.input_index[graph.producer_of(tensor).name]
        return located[id(tensor)]

    def is_source(tensor):
        if graph.is_model_input(tensor):
            return True
        found = located.get(id(tensor))
        return found is not None and found != AMBIGUOUS

    covered = set()  # ids of fused-away quantizer outputs that a located tensor is computed through
    for _, _, _, output in quantizer_calls:
        if located[id(output)] not in (None, AMBIGUOUS):
            _mark_passed(output, located, covered)

    diffs, unmatched, fused = [], list(unmatched_inner), list(fused_inner)
    for name, quantizer, call_input, output in quantizer_calls:
        if graph.is_model_input(call_input):
            continue  # the .tflite's input is this tensor: nothing computes it
        index = located[id(output)]
        if index is None:
            # Fused into the next op only if a compared tensor downstream is computed through
            # it; else (a model output, or a .tflite quantized differently) it is missing.
            (fused if id(output) in covered else unmatched).append(name)
            continue
        sources = graph.source_tensors(output, is_source, stop=False)
        if index == AMBIGUOUS or any(located.get(id(t)) == AMBIGUOUS for t in sources):
            unmatched.append(name)
            continue
        known = {id(t): tensors.value(source_index(t), t, count)[0] for t in sources}
        actual = np.asarray(graph.evaluate(output, known, call=replaying))
        reference, scale = tensors.value(index, output, count)
        diff = np.abs(actual.astype(np.float64) - reference) / scale
        diffs.append(OpDiff(name, float(diff.max()), float(diff.mean())))
    for replay in replays.values():
        for quantizer_name, (reference, scale) in replay["expected"].items():
            if replay["computed"] is None or quantizer_name not in replay["computed"]:
                unmatched.append(quantizer_name)
                continue
            actual = replay["computed"][quantizer_name].astype(np.float64)
            diff = np.abs(actual.reshape(reference.shape) - reference) / scale
            diffs.append(OpDiff(quantizer_name, float(diff.max()), float(diff.mean())))
    diffs.sort(key=lambda d: -d.max_diff_lsb)
    return OpFidelity(tuple(diffs), tuple(unmatched), tuple(fused))


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


def _mark_passed(tensor, located, covered, walked=None):
    """Adds to `covered` the unlocated quantizer outputs between `tensor` and its sources.

    `walked` holds the tensors already walked from, so a branchy graph (NASNet's cells) is
    walked once per tensor, not once per path.
    """
    walked = set() if walked is None else walked
    for parent in graph.parents_of(tensor):
        if id(parent) in walked or located.get(id(parent)) is not None:
            continue  # walked already, or a located tensor: a source
        walked.add(id(parent))
        if id(parent) in located:
            covered.add(id(parent))
        _mark_passed(parent, located, covered, walked)


AMBIGUOUS = -1  # several .tflite tensors could be the quantizer's, with different values
_PENDING = -2  # several candidates, not settled yet (in `_TFLiteTensors.locate`)


def _tflite_quantization(lo, hi, bits):
    """(scale, int8 zero point) that TF's fake quant with range [lo, hi] gives the tensor."""
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels
    zero_point = round(min(max(-lo / scale, 0.0), levels))
    return scale, zero_point - 2 ** (bits - 1)


class _TFLiteTensors:
    """The .tflite run once on `inputs` ({Keras input name: array}), every intermediate tensor
    kept."""

    def __init__(self, tflite, inputs, calls, kernels="builtin"):
        model = read_tflite(tflite)
        self.interpreter = model.interpreter(preserve_all_tensors=True, kernels=kernels)
        # The .tflite lists its inputs by name, sorted, not in Keras's order.
        inputs = ([inputs[name] for name in model.input_names] if set(inputs) == set(model.input_names)
                  else list(inputs.values()))
        for array, tensor in zip(inputs, model.inputs):
            self.interpreter.resize_tensor_input(tensor.index, array.shape)
        self.interpreter.allocate_tensors()
        for array, tensor in zip(inputs, model.inputs):
            self.interpreter.set_tensor(tensor.index, quantize(array, tensor))
        self.interpreter.invoke()
        # Keras input name -> .tflite input index (the input quantizer's output is that tensor)
        self.input_index = {name: t.index for name, t in zip(model.input_names, model.inputs)}
        tensors = tensor_details(self.interpreter)  # shapes for this batch
        self.int8 = {t.index: t for t in tensors.values() if t.dtype == "int8"}
        owners = _scope_owners([t.name for t in tensors.values()], calls)
        self.by_layer = {}  # layer name -> int8 tensors named first in its scope
        for t in self.int8.values():
            parts = t.name.split(";")[0].split("/")[:-1]
            layers = {owners[part] for part in parts if part in owners}
            if len(layers) == 1:
                self.by_layer.setdefault(layers.pop(), []).append(t)
        # tensor index -> (index, name) of the op that writes it, and that op's input tensors
        self.producer = {index: (op.index, op.name) for index, op in model.producers.items()}
        self.inner_indices = set()  # tensors that inner_values found (composite layers')
        self.producer_inputs = {index: op.input_indices for index, op in model.producers.items()}

    def inner_values(self, layer):
        """{inner tensor name: (dequantized value, scale)} of a composite layer, or None.

        Each inner tensor is the last int8 tensor written (not by a QUANTIZE) in the name
        scope of its tag inside the layer's scope (tfqat.nn.composite). A tag with no tensor
        there is left out (the converter removed its op); None when none is found.
        """
        in_scope = [t for t in self.by_layer.get(layer.name, [])
                    if t.index in self.producer and self.producer[t.index][1] != "QUANTIZE"]
        values = {}
        for tag, name in layer.inner_tensors:
            found = [t.index for t in in_scope if tag in t.name.split(";")[0].split("/")[:-1]]
            if not found:
                continue
            index = max(found, key=lambda i: self.producer[i][0])
            self.inner_indices.add(index)
            values[name] = (read_dequantized(self.interpreter, self.int8[index]),
                            self.int8[index].scale)
        return values or None

    def locate(self, quantizer_calls, batch) -> dict:
        """{id(call output): .tflite tensor index, None (fused away) or AMBIGUOUS}.

        The candidates of a call are the tensors of its quantization and size. Ties (a
        concatenation group's members share one scale, equal ReLUs one tensor) are broken by
        the graph first: the call's tensor is the candidate computed from the tensors of the
        call's own sources (the nearest located tensors it is computed from), so ties are
        settled from the inputs on; then by name scope and value (`_pick`).
        """
        by_quantization = {}
        for name, quantizer, call_input, output in quantizer_calls:
            if graph.is_model_input(call_input):
                by_quantization[id(output)] = [self.input_index[graph.producer_of(call_input).name]]
                continue
            scale, zero_point = _tflite_quantization(*quantizer.current_range(), quantizer.bits)
            size = batch * int(np.prod(output.shape[1:]))
            errors = {t.index: abs(t.scale - scale) / scale for t in self.int8.values()
                      if int(np.prod(t.shape)) == size and abs(t.zero_point - zero_point) <= 1}
            errors = {index: e for index, e in errors.items() if e <= 1e-5}
            # Ops chained at almost one scale (a LayerNormalization's last MUL and ADD): the
            # closest scale is this quantizer's own tensor.
            best = min(errors.values(), default=0.0)
            by_quantization[id(output)] = [i for i, e in errors.items() if e <= best + 1e-7]
        state = {id(output): (found[0] if len(found) == 1 else None if not found else _PENDING)
                 for (_, _, _, output), found in
                 ((call, by_quantization[id(call[3])]) for call in quantizer_calls)}
        pending = [call for call in quantizer_calls if state[id(call[3])] == _PENDING]
        progress = True
        while pending and progress:  # each round settles the ties whose sources are settled
            progress, still = False, []
            for call in pending:
                output = call[3]
                found = self._computed_from_sources(by_quantization[id(output)], output, state)
                if found is None:
                    still.append(call)
                    continue
                state[id(output)] = self._pick(found, output, batch)
                progress = True
            pending = still
        for call in pending:  # sources never settled: by name scope and value alone
            state[id(call[3])] = self._pick(by_quantization[id(call[3])], call[3], batch)
        return state

    def _computed_from_sources(self, found, output, state):
        """The candidates in `found` computed from the tensors of `output`'s sources (all of
        `found` if none is, or if that says nothing); None while a source is unsettled."""

        def is_source(tensor):
            return graph.is_model_input(tensor) or state.get(id(tensor)) is not None

        sources = set()
        for tensor in graph.source_tensors(output, is_source, stop=False):
            if graph.is_model_input(tensor) and id(tensor) not in state:
                sources.add(self.input_index[graph.producer_of(tensor).name])
                continue
            index = state[id(tensor)]
            if index in (_PENDING, AMBIGUOUS):
                return None if index == _PENDING else found
            sources.add(index)
        settled = {index for index in state.values() if index not in (None, _PENDING, AMBIGUOUS)}
        settled |= set(self.input_index.values())
        computed = [index for index in found if self._nearest_settled(index, settled) == sources]
        return computed or found

    def _nearest_settled(self, index, settled) -> set:
        """The settled tensors that .tflite tensor `index` is computed from, nearest first."""
        nearest, stack, seen = set(), list(self.producer_inputs.get(index, ())), set()
        while stack:
            parent = stack.pop()
            if parent < 0 or parent in seen:
                continue
            seen.add(parent)
            if parent in settled:
                nearest.add(parent)
            else:  # an unmatched tensor (a requantized copy, a fused-away one) or a constant
                stack.extend(self.producer_inputs.get(parent, ()))
        return nearest

    def _in_scope(self, keras_tensor, batch):
        """int8 tensors of the name scope of the layer that feeds the quantizer."""
        layer = graph.producer_of(graph.input_of(keras_tensor))
        shape = (batch, *keras_tensor.shape[1:])
        in_scope = self.by_layer.get(layer.name, [])
        # The converter may merge a trailing reshape (Conv1D's squeeze) into the next op's:
        # then the layer's tensor exists only in its op layout, with the same values.
        return ([t.index for t in in_scope if t.shape == shape] or
                [t.index for t in in_scope if np.prod(t.shape) == np.prod(shape)])

    def _pick(self, found, keras_tensor, batch):
        if not found:
            return None
        if len(found) > 1:
            in_scope = set(self._in_scope(keras_tensor, batch))
            found = [i for i in found if i in in_scope] or found
            found = [i for i in found if i not in self.inner_indices] or found
            # A QUANTIZE is a copy the converter requantized for one consumer, not the tensor.
            found = [i for i in found if self.producer.get(i, (0, ""))[1] != "QUANTIZE"] or found
        values = [read_dequantized(self.interpreter, self.int8[i]).reshape(-1) for i in found]
        if any(not np.array_equal(values[0], v) for v in values[1:]):
            return AMBIGUOUS
        # Several ops of one layer (a decomposed activation): its last op writes the output.
        return max(found, key=lambda i: self.producer.get(i, (-1, ""))[0])

    def value(self, index, keras_tensor, batch):
        """(dequantized value, scale) of .tflite tensor `index`, shaped like `keras_tensor`."""
        if index not in self.int8:  # an integer input (token ids), as it is
            return self.interpreter.get_tensor(index), 1.0
        tensor = self.int8[index]
        value = read_dequantized(self.interpreter, tensor)
        return value.reshape((batch, *keras_tensor.shape[1:])).astype(np.float32), tensor.scale
