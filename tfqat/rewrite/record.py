"""The quantization record: what `quantize_model` did, kept with the QAT model.

Export, calibration and the diagnostics read this record instead of
re-deriving the rewrite from rule tables, layer names or the Keras graph. It
lists, for each group of float layers that one rule replaced, the rule, the
QAT layers that replace the group and how the group's int8 output scale is
set; and for each activation quantizer, which tensor it quantizes. It is
saved in the model's config (`QATModel.get_config`), so a loaded model has it.
"""

from __future__ import annotations

import contextlib

import dataclasses
import warnings

import keras
from tfqat.rewrite import graph
from tfqat.rewrite.graph import Functional

# How a group's int8 output scale is set (see docs/design.md, "Scale policies").
OWN = "own"            # its own quantizer: a range tracked from data
FIXED = "fixed"        # its own quantizer with the range TFLite's kernel fixes
TIED = "tied"          # the input's quantizer, applied again (ops that round to the input scale)
SHARED = "shared"      # the same int8 tensor as its input: the op keeps the input's scale
CONCAT = "concat"      # set by the concatenation that alone reads it
MAX_MIN = "max_min"    # set by the Maximum/Minimum that alone reads it (one scale for all)
FLOAT = "float"        # excluded: the group stays float
SCALE_POLICIES = (OWN, FIXED, TIED, SHARED, CONCAT, MAX_MIN, FLOAT)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One rewrite step: float layers matched by a rule, and their replacement.

    float_layers: names of the float model's layers (nested ones as "outer/inner").
    rule: the rule's name, or "excluded" for layers left in float.
    qat_layers: names of the QAT model's layers that stand for them.
    scale_policy: one of SCALE_POLICIES.
    output_quantizer: the quantizer that sets the output's int8 scale, if one does.
    """

    float_layers: tuple
    rule: str
    qat_layers: tuple
    scale_policy: str
    output_quantizer: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantizerEntry:
    """One ActivationQuantizer layer of the QAT model.

    float_tensor: the float model layer (or input) whose output this quantizer
      quantizes, when that float tensor is the same value (None where the
      rewrite changed it, e.g. an activation split off a conv, or a nested layer).
    tied_calls: how many extra times it is applied to round another tensor to
      its scale (the outputs of average pooling and bilinear resizing).
    owner: None for a layer of the QAT model; else the QAT layer that calls
      it inside its own `call` (listed in that layer's `inner_quantizers`).
    """

    name: str
    fixed: bool
    float_tensor: str | None
    tied_calls: int = 0
    owner: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantizationRecord:
    """Every decision of one `quantize_model` call.

    Example:
      >>> record = tfqat.record_of(tfqat.quantize_model(model))
      >>> [(d.rule, d.qat_layers) for d in record.decisions][:1]
      [('linear_bn_relu', ('conv1',))]
    """

    decisions: tuple
    quantizers: tuple

    # ---- queries --------------------------------------------------------------------
    @property
    def float_layers(self) -> tuple:
        """QAT-model layers left in float (excluded), in graph order."""
        return tuple(name for d in self.decisions if d.rule == "excluded" for name in d.qat_layers)

    @property
    def quantized_layers(self) -> tuple:
        """QAT-model layers that run as int8 ops (quantizers included)."""
        names = [name for d in self.decisions if d.rule != "excluded" for name in d.qat_layers]
        return tuple(dict.fromkeys([*names, *(q.name for q in self.quantizers)]))

    def quantizer(self, name: str) -> QuantizerEntry:
        for entry in self.quantizers:
            if entry.name == name:
                return entry
        raise KeyError(f"No quantizer '{name}' in the record; it has "
                       f"{', '.join(q.name for q in self.quantizers)}.")

    def tracked_quantizers(self) -> tuple:
        """Names of the quantizers whose range comes from data."""
        return tuple(q.name for q in self.quantizers if not q.fixed)

    def decision_of(self, qat_layer: str) -> Decision | None:
        for decision in self.decisions:
            if qat_layer in decision.qat_layers:
                return decision
        return None

    # ---- serialization ----------------------------------------------------------------
    def to_config(self) -> dict:
        return {"decisions": [dataclasses.asdict(d) for d in self.decisions],
                "quantizers": [dataclasses.asdict(q) for q in self.quantizers]}

    @classmethod
    def from_config(cls, config: dict) -> "QuantizationRecord":
        decisions = tuple(Decision(**{**d, "float_layers": tuple(d["float_layers"]),
                                      "qat_layers": tuple(d["qat_layers"])})
                          for d in config["decisions"])
        return cls(decisions, tuple(QuantizerEntry(**q) for q in config["quantizers"]))

    def __str__(self) -> str:
        lines = [f"{'float layers':<36} {'rule':<24} {'QAT layers':<36} scale"]
        for d in self.decisions:
            scale = d.scale_policy + (f" ({d.output_quantizer})" if d.output_quantizer else "")
            lines.append(f"{', '.join(d.float_layers):<36} {d.rule:<24} "
                         f"{', '.join(d.qat_layers):<36} {scale}")
        return "\n".join(lines)


class RecordBuilder:
    """Collects decisions and quantizers while `quantize_model` rebuilds the graph."""

    def __init__(self):
        self.decisions = []
        self.quantizers = {}  # name -> QuantizerEntry, in creation order

    def add_decision(self, float_layers, rule, qat_layers, scale_policy, output_quantizer=None):
        if scale_policy not in SCALE_POLICIES:
            raise ValueError(f"Unknown scale policy {scale_policy!r}; use one of {SCALE_POLICIES}.")
        self.decisions.append(Decision(tuple(float_layers), rule, tuple(qat_layers),
                                       scale_policy, output_quantizer))

    def add_duplicate(self, float_layer, same_as):
        """`float_layer` computes what float layer `same_as` computes, and shares its QAT layers."""
        kept = next(d for d in self.decisions if same_as in d.float_layers)
        self.add_decision([float_layer], "duplicate", kept.qat_layers, kept.scale_policy,
                          kept.output_quantizer)

    def add_quantizer(self, name, fixed, float_tensor, owner=None):
        self.quantizers[name] = QuantizerEntry(name, bool(fixed), float_tensor, owner=owner)

    def add_tied_call(self, name):
        entry = self.quantizers[name]
        self.quantizers[name] = dataclasses.replace(entry, tied_calls=entry.tied_calls + 1)

    def build(self) -> QuantizationRecord:
        return QuantizationRecord(tuple(self.decisions), tuple(self.quantizers.values()))


LITERT_EXPORT_WARNING = (
    "Keras's export(format='litert') converts a QAT model without int8 settings and writes a "
    "float model (float input/output and kernels, QUANTIZE/DEQUANTIZE pairs). Use "
    "tfqat.export_tflite(qat_model, path) for the integer-only int8 model.")
SAVED_MODEL_WARNING = (
    "tf.saved_model.save of a tfqat QAT model: TFLiteConverter.from_saved_model cannot convert "
    "the result ('tf.FakeQuantWithMinMaxVarsPerChannel' op is neither a custom op nor a flex "
    "op). Use tfqat.export_tflite(qat_model, path) for a .tflite; for a SavedModel to convert "
    "yourself, write it with qat_model.export(dir, format='tf_saved_model') and convert with "
    "optimizations=[tf.lite.Optimize.DEFAULT] and int8 inference input/output types.")


@keras.saving.register_keras_serializable(package="tfqat")
class QATModel(Functional):
    """The Functional model `quantize_model` returns: the QAT graph plus its record.

    It is an ordinary Functional Keras model (fit, evaluate, save); the record
    travels in its config, so `keras.models.load_model` restores it.

    Example:
      >>> qat = tfqat.quantize_model(model)
      >>> qat.save("qat.keras"); keras.models.load_model("qat.keras").quantization_record
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        record = kwargs.pop("quantization_record", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        if isinstance(record, dict):
            record = QuantizationRecord.from_config(record)
        self._quantization_record = record
        self._link_bias_grids()

    def _link_bias_grids(self):
        """Links each fused layer that reads an ActivationQuantizer's tensor to it, so inference
        adds the bias on the converter's int32 grid (FusedQuantLayer.link_input_quantizer)."""
        from tfqat.nn.layers import FusedQuantLayer
        from tfqat.nn.quantizers import ActivationQuantizer

        record = self._quantization_record
        # Layers whose int8 output is their input's tensor (padding, reshapes): looked through.
        shared = {name for d in (record.decisions if record else ()) if d.scale_policy == SHARED
                  for name in d.qat_layers}

        def source_of(tensor):
            while not graph.is_model_input(tensor) and graph.producer_of(tensor).name in shared:
                tensor = graph.input_of(tensor)
            return graph.producer_of(tensor)

        for layer in self.layers:
            if not isinstance(layer, FusedQuantLayer):
                continue
            sources = {id(source): source for source in
                       (source_of(x) for x, _ in graph.calls_of(self, layer) if x is not None)}
            if len(sources) == 1:
                (source,) = sources.values()
                if isinstance(source, ActivationQuantizer):
                    layer.link_input_quantizer(source)

    @property
    def quantization_record(self) -> QuantizationRecord | None:
        return self._quantization_record

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras's `Model.export`, with a warning where its result is not an int8 model.

        Keras converts `format="litert"` without int8 settings: the file has float
        input and output and float kernels. `tfqat.export_tflite(qat, path)` writes
        the integer-only model.
        """
        if format == "litert":
            warnings.warn(LITERT_EXPORT_WARNING, UserWarning, stacklevel=2)
        with self.converting():  # Keras's SavedModel export converts fine
            return super().export(filepath, format=format, verbose=verbose,
                                  input_signature=input_signature, **kwargs)

    @contextlib.contextmanager
    def converting(self):
        """Silences the tf.saved_model.save warning while a conversion that works runs
        (Keras's own export, tfqat.export_tflite's converter).

        Example:
          >>> with qat.converting():
          ...     flatbuffer = tf.lite.TFLiteConverter.from_keras_model(qat).convert()
        """
        from tfqat.nn.layers import float_bias

        running = getattr(self, "_keras_export_running", False)
        self._keras_export_running = True
        try:
            with float_bias():  # the converter rounds the float bias itself
                yield
        finally:
            self._keras_export_running = running

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # TensorFlow's SavedModel protocol: `tf.saved_model.save(qat, d)` asks the model
        # for its children. TFLiteConverter.from_saved_model cannot fold the weight fake
        # quants of what it writes; say so before the user converts.
        if save_type == "savedmodel" and not getattr(self, "_keras_export_running", False):
            warnings.warn(SAVED_MODEL_WARNING, UserWarning, stacklevel=2)
        return super()._trackable_children(save_type, **kwargs)

    def get_config(self):
        config = super().get_config()
        if self._quantization_record is not None:
            config["quantization_record"] = self._quantization_record.to_config()
        return config


def find_quantizer(qat_model, entry: QuantizerEntry):
    """The ActivationQuantizer layer that record entry `entry` names in `qat_model`."""
    if entry.owner is None:
        return qat_model.get_layer(entry.name)
    for quantizer in qat_model.get_layer(entry.owner).inner_quantizers:
        if quantizer.name == entry.name:
            return quantizer
    raise ValueError(f"Layer '{entry.owner}' has no inner quantizer '{entry.name}'.")


def record_of(qat_model) -> QuantizationRecord:
    """The record of a model made by `tfqat.quantize_model`, or a clear error.

    Example:
      >>> print(tfqat.record_of(qat))  # one line per rewrite decision
    """
    record = getattr(qat_model, "quantization_record", None)
    if isinstance(record, QuantizationRecord):
        return record
    name = getattr(qat_model, "name", type(qat_model).__name__)
    raise ValueError(
        f"Model '{name}' has no tfqat quantization record: it is not a model returned by "
        "tfqat.quantize_model (or it was saved by a tfqat version before 0.2, or it wraps the "
        "QAT model in another model). Run tfqat.quantize_model(float_model) and use its result.")
