"""Reads a .tflite model: ops, tensors, quantization and integer-only-ness."""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
from ai_edge_litert import schema_py_generated as schema_fb
from ai_edge_litert.interpreter import Interpreter, OpResolverType

INTEGER_DTYPES = ("int8", "int32")
# Metadata entry that export_tflite(..., allow_float_ops=True) adds to the .tflite.
FLOAT_OPS_ALLOWED_METADATA = "tfqat_allow_float_ops"


@dataclasses.dataclass
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int

    def quantization_text(self) -> str:
        if self.scales.size == 0:
            return "-"
        if self.scales.size == 1:
            return f"s={self.scales[0]:.6g} zp={int(self.zero_points[0])}"
        return (f"per-axis({self.quantized_dimension}) x{self.scales.size} "
                f"s=[{self.scales.min():.3g}..{self.scales.max():.3g}]")


@dataclasses.dataclass
class OpInfo:
    index: int
    name: str
    inputs: list
    outputs: list

    @property
    def is_integer(self) -> bool:
        tensors = self.inputs + self.outputs
        if self.name == "DEQUANTIZE":
            return False
        if self.name == "QUANTIZE":  # int8 -> int8 is an integer requantize; from float it is not
            return all(t.dtype == "int8" for t in tensors)
        return all(t.dtype in INTEGER_DTYPES for t in tensors)


@dataclasses.dataclass
class TFLiteReport:
    """What `inspect_tflite` finds; `str(report)` is a readable table."""

    size_bytes: int
    ops: list
    inputs: list
    outputs: list
    float_ops_allowed: bool = False  # exported with allow_float_ops=True

    @property
    def hybrid(self) -> bool:
        """Float ops kept on purpose: exported with allow_float_ops=True and some remain."""
        return self.float_ops_allowed and bool(self.float_ops)

    @property
    def op_histogram(self) -> collections.Counter:
        return collections.Counter(op.name for op in self.ops)

    @property
    def float_ops(self) -> list:
        """Ops that are not integer kernels: a non-int8/int32 tensor, DEQUANTIZE, float QUANTIZE."""
        return [op for op in self.ops if not op.is_integer]

    @property
    def integer_only(self) -> bool:
        # Token-id inputs (an Embedding's GATHER indices) stay int32.
        io_int8 = all(t.dtype == "int8" for t in self.outputs) and \
            all(t.dtype in ("int8", "int32") for t in self.inputs)
        return io_int8 and not self.float_ops

    def __str__(self) -> str:
        lines = [f"TFLite model: {self.size_bytes:,} bytes, {len(self.ops)} ops, "
                 f"integer-only: {'yes' if self.integer_only else 'NO'}"]
        if self.hybrid:
            lines.append(f"hybrid: float ops kept on purpose (allow_float_ops=True): "
                         f"{len(self.float_ops)} float ops")
        elif self.float_ops_allowed:
            lines.append("exported with allow_float_ops=True; no float ops remain")
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            for t in tensors:
                lines.append(f"  {kind:6} {t.name}: {t.dtype}{list(t.shape)} {t.quantization_text()}")
        lines.append("op histogram: " + ", ".join(
            f"{name} x{count}" for name, count in sorted(self.op_histogram.items())))
        lines.append(f"{'#':>3}  {'op':<22} {'tensor':<44} {'dtype':<8} quantization")
        for op in self.ops:
            for role, tensors in (("in", op.inputs), ("out", op.outputs)):
                for t in tensors:
                    lines.append(f"{op.index:>3}  {op.name if role == 'in' and t is op.inputs[0] else '':<22} "
                                 f"{role + ' ' + _short(t.name):<44} {t.dtype:<8} {t.quantization_text()}")
        for op in self.float_ops:
            lines.append(f"not integer: op {op.index} {op.name}")
        return "\n".join(lines)


def _short(name: str, width: int = 40) -> str:
    name = name.split(";")[0]
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _tensor_info(detail) -> TensorInfo:
    quant = detail["quantization_parameters"]
    return TensorInfo(
        index=int(detail["index"]), name=detail["name"], dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) for d in detail["shape"]), scales=np.asarray(quant["scales"]),
        zero_points=np.asarray(quant["zero_points"]),
        quantized_dimension=int(quant["quantized_dimension"]))


def load_interpreter(model, preserve_all_tensors: bool = False) -> Interpreter:
    """A LiteRT interpreter for `model` (bytes or a path), with the model's own ops.

    With `preserve_all_tensors`, intermediate tensors keep their values after
    `invoke()` (for op-by-op comparisons; uses more memory).

    Example:
      >>> interpreter = load_interpreter("model_int8.tflite")
      >>> interpreter.allocate_tensors()
    """
    kwargs = dict(experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                  experimental_preserve_all_tensors=preserve_all_tensors)
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), **kwargs)
    return Interpreter(model_path=os.fspath(model), **kwargs)


def _float_ops_allowed(content: bytes) -> bool:
    model = schema_fb.Model.GetRootAs(content, 0)
    return any(model.Metadata(i).Name() == FLOAT_OPS_ALLOWED_METADATA.encode()
               for i in range(model.MetadataLength()))


def inspect_tflite(model) -> TFLiteReport:
    """Reports the ops, tensors and quantization of a .tflite (bytes or path).

    Example:
      >>> report = inspect_tflite("model_int8.tflite")
      >>> report.integer_only, report.op_histogram["CONV_2D"]
      (True, 2)
      >>> report.hybrid  # True for a model exported with allow_float_ops=True that has float ops
      False
      >>> print(report)
    """
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
    else:
        with open(model, "rb") as f:
            content = f.read()
    interpreter = load_interpreter(content)
    tensors = {d["index"]: _tensor_info(d) for d in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        ops.append(OpInfo(
            index=int(op["index"]), name=op["op_name"],
            inputs=[tensors[i] for i in op["inputs"] if i >= 0],
            outputs=[tensors[i] for i in op["outputs"] if i >= 0]))
    return TFLiteReport(
        size_bytes=len(content), ops=ops, float_ops_allowed=_float_ops_allowed(content),
        inputs=[tensors[d["index"]] for d in interpreter.get_input_details()],
        outputs=[tensors[d["index"]] for d in interpreter.get_output_details()])
