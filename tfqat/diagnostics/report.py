"""Where quantization error comes from: per-layer SQNR and .tflite output diffs.

`layer_report` compares every tracked activation of a QAT model with the
float model's tensor at the same point. `compare_tflite` says how far a
.tflite's outputs are from its QAT model's, in output LSBs, and which inputs
differ most.

Matching QAT quantizers to float tensors: the quantization record says, for
each quantizer, which float layer's output it quantizes (a fused conv1 -> bn1
-> relu1 quantizes relu1's output). Where no float tensor corresponds (the
conv before an activation that quantize_model split off, a layer of a nested
float model, a different float model) the reference is the same QAT tensor
with every activation quantizer passed through ("bypassed"): it still has
fake-quantized weights, so it shows activation error only. Each row says which
reference it used.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import keras
import numpy as np

from tfqat.calibration.calibrators import quantizer_input_model, run_probe, tracked_quantizers
from tfqat.inputs import check_inputs, input_batches
from tfqat.diagnostics.evaluation import compare_to_model, run_tflite
from tfqat.files import atomic_write_bytes
from tfqat.nn.quantizers import bypass_quantizers
from tfqat.rewrite import graph
from tfqat.rewrite.record import record_of

BYPASSED = "bypassed"


# ---- layer_report ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerError:
    """One quantized tensor of a QAT model.

    sqnr_db: 10 log10(sum(ref^2) / sum((ref - fq)^2)) of the fake-quantized
      activation against the reference: all error up to and including this tensor.
    local_sqnr_db: the same for this quantizer alone (its output vs its input).
    saturation: share of the quantizer's input values outside [range_min, range_max].
    reference: "float:<layer>" (the float model's tensor) or "bypassed".
    """

    name: str
    reference: str
    sqnr_db: float
    local_sqnr_db: float
    range_min: float
    range_max: float
    saturation: float
    num_values: int


CSV_COLUMNS = [field.name for field in dataclasses.fields(LayerError)]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What `layer_report` returns: `str(report)` is a table; `to_csv` writes it."""

    rows: tuple

    def __str__(self) -> str:
        header = (f"{'quantizer':<28} {'reference':<24} {'SQNR dB':>8} {'local dB':>9} "
                  f"{'range':>24} {'saturated':>10}")
        lines = [header, "-" * len(header)]
        for row in self.rows:
            span = f"[{row.range_min:.4g}, {row.range_max:.4g}]"
            lines.append(f"{row.name:<28} {row.reference:<24} {_db(row.sqnr_db):>8} "
                         f"{_db(row.local_sqnr_db):>9} {span:>24} {row.saturation:>10.3%}")
        if self.rows:
            worst = min(self.rows, key=lambda r: r.sqnr_db)
            lines.append(f"lowest SQNR: {worst.name} ({_db(worst.sqnr_db)} dB)")
        return "\n".join(lines)

    def row(self, name: str) -> LayerError:
        """The row of quantizer `name`, e.g. report.row("conv1_fq").sqnr_db."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"No row '{name}'; rows: {', '.join(r.name for r in self.rows)}.")

    def to_csv(self, path) -> None:
        """Writes the rows as CSV (header: CSV_COLUMNS), atomically.

        Example:
          >>> layer_report(model, qat, x_test[:256]).to_csv("layers.csv")
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            writer.writerow([repr(v) if isinstance(v, float) else v
                             for v in dataclasses.astuple(row)])
        atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _float_counterpart(float_model, qat_model, quantizer):
    """(float KerasTensor, float layer name) for a QAT quantizer, from the quantization record."""
    name = record_of(qat_model).quantizer(quantizer.name).float_tensor
    tensor = graph.output_of(float_model, name) if name is not None else None
    if tensor is None or tuple(tensor.shape[1:]) != tuple(graph.untied_call(quantizer)[0].shape[1:]):
        return None
    return tensor, name


class _Accumulator:
    def __init__(self):
        self.signal = self.noise = self.local_signal = self.local_noise = 0.0
        self.saturated = 0
        self.count = 0

    def add(self, reference, quantizer_input, quantized, lo, hi):
        reference = np.asarray(reference, np.float64)
        quantizer_input = np.asarray(quantizer_input, np.float64)
        quantized = np.asarray(quantized, np.float64)
        self.signal += float(np.sum(reference ** 2))
        self.noise += float(np.sum((reference - quantized) ** 2))
        self.local_signal += float(np.sum(quantizer_input ** 2))
        self.local_noise += float(np.sum((quantizer_input - quantized) ** 2))
        self.saturated += int(np.count_nonzero((quantizer_input < lo) | (quantizer_input > hi)))
        self.count += quantizer_input.size


def layer_report(float_model, qat_model, data, batch_size: int = 32,
                 num_batches=None) -> LayerReport:
    """Per quantized tensor: SQNR against float, range and saturated share.

    Runs `qat_model` (inference mode) and `float_model` on `data` and compares
    each tracked activation quantizer's output with the float model's tensor at
    the same point (see the module docstring for the matching, and for the
    "bypassed" reference used where no float tensor matches; pass
    float_model=None to use it everywhere). The QAT model must be calibrated
    or trained.

    Args:
      float_model: the model given to quantize_model, or None.
      qat_model: the QAT model.
      data: a numpy array of inputs, or an iterable / tf.data.Dataset of
        input batches or (x, y) batches.
      batch_size, num_batches: as in `tfqat.calibrate`.

    Example:
      >>> report = layer_report(model, qat, x_test[:256])
      >>> print(report)                # one row per quantized tensor
      >>> report.to_csv("layers.csv")
    """
    quantizers = tracked_quantizers(qat_model, inner=False)
    if not quantizers:
        raise ValueError(f"Model '{qat_model.name}' has no tracked activation quantizers; pass "
                         "the model returned by tfqat.quantize_model(model).")
    uncalibrated = [q.name for q in quantizers if not q.is_calibrated]
    if uncalibrated:
        raise ValueError(f"layer_report: these quantizers never saw data: "
                         f"{', '.join(uncalibrated)}. Calibrate (tfqat.calibrate) or train the "
                         "QAT model first.")
    counterparts = {}
    if float_model is not None:
        _check_same_inputs(float_model, qat_model)
        counterparts = {q.name: _float_counterpart(float_model, qat_model, q) for q in quantizers}
    matched = [q for q in quantizers if counterparts.get(q.name) is not None]
    bypassed = [q for q in quantizers if counterparts.get(q.name) is None]

    qat_probe = keras.Model(qat_model.input, [graph.untied_call(q) for q in quantizers])
    float_probe = keras.Model(float_model.input, [counterparts[q.name][0] for q in matched]) \
        if matched else None
    bypass_probe = quantizer_input_model(qat_model, bypassed) if bypassed else None

    totals = {q.name: _Accumulator() for q in quantizers}
    ranges = {q.name: q.current_range() for q in quantizers}
    seen = 0
    for batch in input_batches(qat_model, data, batch_size, num_batches, what="layer_report"):
        references = {}
        if float_probe is not None:
            for q, value in zip(matched, run_probe(float_probe, batch)):
                references[q.name] = value
        if bypass_probe is not None:
            with bypass_quantizers(qat_model):
                for q, value in zip(bypassed, run_probe(bypass_probe, batch)):
                    references[q.name] = value
        values = run_probe(qat_probe, batch)  # input, output, input, output, ...
        for q, quantizer_input, quantized in zip(quantizers, values[0::2], values[1::2]):
            totals[q.name].add(references[q.name], quantizer_input, quantized, *ranges[q.name])
        seen += 1
    if seen == 0:
        raise ValueError("layer_report: data gave no batches; pass at least one batch of inputs.")
    rows = []
    for q in quantizers:
        total = totals[q.name]
        reference = (f"float:{counterparts[q.name][1]}" if counterparts.get(q.name) is not None
                     else BYPASSED)
        rows.append(LayerError(
            name=q.name, reference=reference, sqnr_db=_sqnr_db(total.signal, total.noise),
            local_sqnr_db=_sqnr_db(total.local_signal, total.local_noise),
            range_min=ranges[q.name][0], range_max=ranges[q.name][1],
            saturation=total.saturated / max(total.count, 1), num_values=total.count))
    return LayerReport(tuple(rows))


def _check_same_inputs(float_model, qat_model):
    float_shapes = [tuple(t.shape[1:]) for t in float_model.inputs]
    qat_shapes = [tuple(t.shape[1:]) for t in qat_model.inputs]
    if float_shapes != qat_shapes:
        raise ValueError(
            f"layer_report: float model '{float_model.name}' takes inputs {float_shapes} but QAT "
            f"model '{qat_model.name}' takes {qat_shapes}; pass the float model that "
            "quantize_model was given.")


# ---- compare_tflite --------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class TFLiteDiff:
    """What `compare_tflite` returns.

    summary: tfqat.diagnostics.evaluation.Comparison (agreement, max/mean LSB difference,
      accuracies when labels were given); a list of them for several outputs.
    lsb_histogram: {difference in output LSBs (rounded): number of output values}.
    worst_indices: input indices, worst first: top-1 disagreements, then the
      largest per-input LSB difference.
    worst_diff_lsb: the largest LSB difference of each of those inputs.
    disagreements: indices of all inputs whose top-1 class differs.
    kernels: the LiteRT kernels that ran the .tflite ("builtin", "xnnpack", "reference").
    """

    summary: object
    lsb_histogram: dict
    worst_indices: np.ndarray
    worst_diff_lsb: np.ndarray
    disagreements: np.ndarray
    kernels: str = "builtin"

    @property
    def agreement(self) -> float:
        """Top-1 agreement (the lowest over the outputs, for several)."""
        return min(s.agreement for s in self._summaries)

    @property
    def _summaries(self) -> list:
        return self.summary if isinstance(self.summary, list) else [self.summary]

    def __str__(self) -> str:
        lines = [f"LiteRT kernels: {self.kernels}"]
        for number, s in enumerate(self._summaries):
            which = f"output {number}: " if len(self._summaries) > 1 else ""
            lines.append(f"{which}{s.num_examples} inputs: top-1 agreement {s.agreement:.2%}, "
                         f"output difference max {s.max_diff_lsb:.2f} LSB, mean "
                         f"{s.mean_diff_lsb:.3f} LSB")
            if s.tflite_accuracy is not None:
                lines.append(f"{which}accuracy: tflite {s.tflite_accuracy:.2%}, keras "
                             f"{s.model_accuracy:.2%}")
        lines.append(f"{len(self.disagreements)} inputs differ in a top-1 class")
        total = sum(self.lsb_histogram.values())
        lines.append("output values by |difference| in LSBs:")
        for lsb, count in sorted(self.lsb_histogram.items()):
            lines.append(f"  {lsb:>4} LSB: {count:>9,} ({count / total:.2%})")
        lines.append("worst inputs (index: max LSB difference): " + ", ".join(
            f"{i}: {d:.2f}" for i, d in zip(self.worst_indices, self.worst_diff_lsb)))
        return "\n".join(lines)


def compare_tflite(qat_model, tflite, data, labels=None, batch_size: int = 256,
                   num_worst: int = 10, kernels: str = "builtin") -> TFLiteDiff:
    """How a .tflite's outputs differ from its QAT model's, input by input.

    Builds on tfqat.diagnostics.evaluation: `compare_to_model` gives the summary and
    `run_tflite` the per-input outputs (so the .tflite runs twice).

    Args:
      qat_model: the QAT model the .tflite was exported from.
      tflite: the .tflite (bytes or path).
      data: the float inputs, batch axis first: an array, or for several inputs a
        list (Keras input order) or a dict keyed by input name.
      labels: optional class labels, one per input (a list of them for several
        outputs), for accuracies.
      num_worst: how many worst inputs to list.
      kernels: which LiteRT kernels run the .tflite: "builtin" (no delegate),
        "xnnpack" (the XNNPACK delegate, what LiteRT's default interpreter runs
        on a phone or PC; it rounds some ops differently) or "reference".

    With several outputs, `summary` is a list of Comparisons in the Keras
    output order, and the histogram, worst inputs and disagreements cover all
    outputs.

    Example:
      >>> diff = compare_tflite(qat, "model_int8.tflite", x_test, y_test)
      >>> diff.agreement, diff.lsb_histogram
      (0.998, {0: 35712, 1: 188})
      >>> print(diff)
      >>> compare_tflite(qat, "model_int8.tflite", x_test, y_test, kernels="xnnpack").agreement
    """
    several = len(qat_model.inputs) > 1
    if not (hasattr(data, "shape") or several and isinstance(data, (list, tuple, dict))):
        raise TypeError(f"compare_tflite: data must be a numpy array of inputs (a list or dict "
                        f"of them for several inputs), not {type(data).__name__}.")
    x = check_inputs(qat_model, data, "data", "compare_tflite")
    count = len(x[0]) if isinstance(x, list) else len(x)
    if count == 0:
        raise ValueError("compare_tflite: data holds no inputs; pass at least one input, "
                         "batch axis first.")
    if labels is not None:
        per_output = isinstance(labels, (list, tuple)) and len(qat_model.outputs) > 1
        flat = [np.asarray(l).reshape(-1) for l in (labels if per_output else [labels])]
        if any(len(l) != count for l in flat):
            raise ValueError(f"compare_tflite: {len(flat[0])} labels for {count} inputs; pass "
                             "one class label per input.")
        labels = flat[0] if len(flat) == 1 else flat
    if not isinstance(num_worst, int) or num_worst < 0:
        raise ValueError(f"num_worst={num_worst!r} must be a non-negative integer.")
    summary = compare_to_model(qat_model, tflite, x, labels, batch_size=batch_size,
                               kernels=kernels)
    lite = run_tflite(tflite, x, batch_size=batch_size, kernels=kernels)
    lites = lite if isinstance(lite, list) else [lite]
    keras_outs = [np.asarray(o, np.float32) for o in
                  keras.tree.flatten(qat_model.predict(x, batch_size=batch_size, verbose=0))]
    diffs, disagree = [], np.zeros(count, bool)
    for out, keras_out in zip(lites, keras_outs):
        diff = np.abs(out.dequantized.astype(np.float64) - keras_out) / out.scale
        diffs.append(diff.reshape(count, -1))
        differs = out.dequantized.argmax(-1) != keras_out.argmax(-1)
        disagree |= differs.reshape(count, -1).any(axis=1)
    diff = np.concatenate(diffs, axis=1)
    per_input = diff.max(axis=1)
    order = np.lexsort((-per_input, ~disagree))  # disagreements first, then by difference
    worst = order[:num_worst]
    counts = np.bincount(np.rint(diff).astype(np.int64).reshape(-1))
    histogram = {int(lsb): int(c) for lsb, c in enumerate(counts) if c}
    return TFLiteDiff(summary=summary, lsb_histogram=histogram, worst_indices=worst,
                      worst_diff_lsb=per_input[worst], disagreements=np.flatnonzero(disagree),
                      kernels=kernels)
