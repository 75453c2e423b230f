"""The one module that reads a .tflite: ops, tensors, quantization, metadata, interpreters.

Everything else in tfqat, and the bench, reads .tflite files through this
module: `inspect_tflite`, export's integer-only check and metadata entry, the
evaluation and op-fidelity diagnostics. Only this module imports a flatbuffer
schema module or uses the interpreter's private op listing, so a change of
either (a LiteRT release renames them) is fixed in one place; a test
(tests/test_reader.py) keeps it that way.

Example:
  >>> model = read_tflite("model_int8.tflite")
  >>> [op.name for op in model.ops][:2], model.inputs[0].scale
  (['CONV_2D', 'MAX_POOL_2D'], 0.003921568859368563)
  >>> interpreter = model.interpreter()
  >>> interpreter.allocate_tensors()
  >>> interpreter.set_tensor(model.inputs[0].index, quantize(x, model.inputs[0]))
  >>> interpreter.invoke()
  >>> read_dequantized(interpreter, model.outputs[0])  # float64, in real units
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

import flatbuffers
import numpy as np
# The same schema module reads and writes (metadata): a model written with one
# schema version and read with another could lose the fields one of them lacks.
from ai_edge_litert import schema_py_generated as schema_fb
from ai_edge_litert.interpreter import Interpreter, OpResolverType

# bool is no float: a comparison's result and SELECT_V2's condition (a bool attention mask).
INTEGER_DTYPES = ("int8", "int32", "bool")
# Integer dtypes that carry a scale and zero point as inputs/outputs of a model.
QUANTIZED_DTYPES = ("int8", "uint8", "int16")
# Metadata entry that export_tflite(..., allow_float_ops=True) adds to the .tflite.
FLOAT_OPS_ALLOWED_METADATA = "tfqat_allow_float_ops"
# JSON list of the Keras model's input names in its order (written for several inputs).
INPUT_ORDER_METADATA = "tfqat_input_order"
_FILE_IDENTIFIER = b"TFL3"

# Kernel sets of `load_interpreter`. "builtin" runs the model's own ops with
# LiteRT's builtin kernels and no delegate, so every op (and every kept
# intermediate tensor) is the model's; "xnnpack" is the interpreter a user gets
# by default, with XNNPACK taking over the ops it supports (what latency is
# measured with); "reference" is LiteRT's slow reference kernels.
KERNELS = {
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "xnnpack": OpResolverType.AUTO,
    "reference": OpResolverType.BUILTIN_REF,
}


@dataclasses.dataclass
class TensorInfo:
    """One tensor of the model: per-tensor quantization has one scale, per-axis one per channel.

    Example:
      >>> t = read_tflite("model_int8.tflite").inputs[0]
      >>> t.dtype, t.shape, t.scale, t.zero_point, t.per_axis
      ('int8', (1, 28, 28, 1), 0.00392..., -128, False)
    """

    index: int
    name: str
    dtype: str
    shape: tuple
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int

    @classmethod
    def from_detail(cls, detail) -> "TensorInfo":
        """From one entry of the interpreter's get_tensor/input/output_details()."""
        quant = detail["quantization_parameters"]
        return cls(
            index=int(detail["index"]), name=detail["name"], dtype=np.dtype(detail["dtype"]).name,
            shape=tuple(int(d) for d in detail["shape"]), scales=np.asarray(quant["scales"]),
            zero_points=np.asarray(quant["zero_points"]),
            quantized_dimension=int(quant["quantized_dimension"]))

    @property
    def per_axis(self) -> bool:
        return self.scales.size > 1

    @property
    def scale(self) -> float:
        """The per-tensor scale; 0.0 for a per-axis or unquantized tensor (as LiteRT reports it)."""
        return float(self.scales[0]) if self.scales.size == 1 else 0.0

    @property
    def zero_point(self) -> int:
        """The per-tensor zero point; 0 for a per-axis or unquantized tensor."""
        return int(self.zero_points[0]) if self.scales.size == 1 else 0

    @property
    def is_quantized(self) -> bool:
        """An int8/uint8/int16 tensor with one nonzero scale (an input/output in real units)."""
        return self.dtype in QUANTIZED_DTYPES and bool(self.scale)

    def quantization_text(self) -> str:
        if self.scales.size == 0:
            return "-"
        if self.scales.size == 1:
            return f"s={self.scales[0]:.6g} zp={int(self.zero_points[0])}"
        return (f"per-axis({self.quantized_dimension}) x{self.scales.size} "
                f"s=[{self.scales.min():.3g}..{self.scales.max():.3g}]")


@dataclasses.dataclass
class OpInfo:
    """One op in execution order, with its input and output tensors (optional inputs left out)."""

    index: int
    name: str
    inputs: list
    outputs: list
    # The op's builtin options, snake_case keys ({"padding": "SAME", "stride_w": 1,
    # "fused_activation_function": "RELU", ...}); {} for an op without options.
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def input_indices(self) -> list:
        return [t.index for t in self.inputs]

    @property
    def output_indices(self) -> list:
        return [t.index for t in self.outputs]

    @property
    def is_integer(self) -> bool:
        tensors = self.inputs + self.outputs
        if self.name == "DEQUANTIZE":
            return False
        if self.name == "QUANTIZE":  # int8 -> int8 is an integer requantize; from float it is not
            return all(t.dtype == "int8" for t in tensors)
        return all(t.dtype in INTEGER_DTYPES for t in tensors)


@dataclasses.dataclass(eq=False)
class TFLiteModel:
    """A .tflite as `read_tflite` reads it (its main subgraph).

    tensors: {index: TensorInfo}, with the shapes stored in the file.
    ops: OpInfo in execution order. inputs, outputs: TensorInfo of the model's, in
      the Keras model's order (the converter reorders outputs; its serving signature
      keeps the Keras order of outputs, and export_tflite records the order of
      several inputs).
    metadata: {name: bytes} of the flatbuffer's metadata entries.
    input_names: the input names, in `inputs` order: the Keras model's order where
      export_tflite recorded it (several inputs), else the signature's (sorted by
      name), else the tensor names.
    constants: {tensor index: np.ndarray} of the tensors stored with data in the
      file (weights, biases, shapes, axes), in the tensor's dtype and shape.
    """

    content: bytes
    tensors: dict
    ops: list
    inputs: list
    outputs: list
    metadata: dict
    input_names: list = dataclasses.field(default_factory=list)
    constants: dict = dataclasses.field(default_factory=dict)

    def interpreter(self, kernels: str = "builtin", preserve_all_tensors: bool = False,
                    num_threads: int | None = None) -> Interpreter:
        """A new interpreter for this model; see `load_interpreter`.

        Example:
          >>> read_tflite(flatbuffer).interpreter(preserve_all_tensors=True)
        """
        return load_interpreter(self.content, preserve_all_tensors=preserve_all_tensors,
                                kernels=kernels, num_threads=num_threads)

    @property
    def producers(self) -> dict:
        """{tensor index: the OpInfo that writes it}; constants and model inputs have none."""
        return {index: op for op in self.ops for index in op.output_indices}


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """How the flatbuffer stores one tensor of any subgraph (for size accounting).

    buffer: index of its constant data, 0 for none. data_bytes: that data's size.
    num_scales, num_zero_points: lengths of its quantization arrays.
    """

    subgraph: int
    index: int
    rank: int
    buffer: int
    data_bytes: int
    num_scales: int
    num_zero_points: int


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
        """Ops that are not integer kernels: a non-int8/int32/bool tensor, DEQUANTIZE, float QUANTIZE."""
        return [op for op in self.ops if not op.is_integer]

    @property
    def integer_only(self) -> bool:
        # Token-id inputs (an Embedding's GATHER indices) stay int32, attention masks bool
        # or int32.
        io_int8 = all(t.dtype == "int8" for t in self.outputs) and \
            all(t.dtype in INTEGER_DTYPES for t in self.inputs)
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


def _content(model) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def load_interpreter(model, preserve_all_tensors: bool = False, kernels: str = "builtin",
                     num_threads: int | None = None) -> Interpreter:
    """A LiteRT interpreter for `model` (bytes or a path).

    `kernels`: "builtin" (the default) runs the model's own ops on LiteRT's
    builtin kernels, no delegate; "xnnpack" is what a user gets by default,
    XNNPACK delegating the ops it supports; "reference" uses LiteRT's reference
    kernels. With `preserve_all_tensors`, intermediate tensors keep their values
    after `invoke()` (for op-by-op comparisons; uses more memory).

    Example:
      >>> interpreter = load_interpreter("model_int8.tflite")
      >>> interpreter.allocate_tensors()
      >>> fast = load_interpreter("model_int8.tflite", kernels="xnnpack", num_threads=2)
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; use one of {', '.join(map(repr, KERNELS))}.")
    kwargs = dict(experimental_op_resolver_type=KERNELS[kernels],
                  experimental_preserve_all_tensors=preserve_all_tensors)
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), **kwargs)
    return Interpreter(model_path=os.fspath(model), **kwargs)


def tensor_details(interpreter) -> dict:
    """{index: TensorInfo} of the tensors as `interpreter` holds them now.

    After `resize_tensor_input` and `allocate_tensors` the shapes are the
    resized ones (read_tflite's are the file's).

    Example:
      >>> interpreter.resize_tensor_input(0, (8, 28, 28, 1)); interpreter.allocate_tensors()
      >>> tensor_details(interpreter)[0].shape
      (8, 28, 28, 1)
    """
    return {int(d["index"]): TensorInfo.from_detail(d) for d in interpreter.get_tensor_details()}


def _ops(interpreter, tensors) -> list:
    # The interpreter lists ops only privately; no other module may call this.
    return [OpInfo(index=int(op["index"]), name=op["op_name"],
                   inputs=[tensors[i] for i in op["inputs"] if i >= 0],
                   outputs=[tensors[i] for i in op["outputs"] if i >= 0])
            for op in interpreter._get_ops_details()]


def read_tflite(model) -> TFLiteModel:
    """Reads a .tflite (bytes or path): its ops, tensors, inputs, outputs and metadata.

    Raises ValueError (or RuntimeError) when LiteRT's verifier rejects the file.

    Example:
      >>> model = read_tflite("model_int8.tflite")
      >>> model.producers[model.outputs[0].index].name
      'SOFTMAX'
    """
    content = _content(model)
    interpreter = load_interpreter(content)  # verifies the flatbuffer first
    tensors = tensor_details(interpreter)
    names, inputs, outputs = _signature_io(interpreter)
    ops = _ops(interpreter, tensors)
    options, constants = _options_and_constants(content, tensors)
    if len(options) == len(ops):  # the builtin interpreter runs subgraph 0's operators in order
        for op, (code, op_options) in zip(ops, options):
            if code == op.name:
                op.options = op_options
    metadata = read_metadata(content)
    names, inputs = _keras_input_order(names, inputs, metadata)
    return TFLiteModel(
        content=content, tensors=tensors, ops=ops,
        inputs=[tensors[i] for i in inputs], outputs=[tensors[i] for i in outputs],
        metadata=metadata, input_names=names, constants=constants)


def _keras_input_order(names, indices, metadata):
    """(names, indices) in the Keras model's input order where export_tflite recorded it;
    the serving signature itself lists inputs sorted by name."""
    recorded = metadata.get(INPUT_ORDER_METADATA)
    if recorded is None:
        return names, indices
    order = json.loads(recorded.decode())
    if sorted(order) != sorted(names):
        return names, indices
    position = dict(zip(names, indices))
    return order, [position[name] for name in order]


def _enum_names(enum_class) -> dict:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-zA-Z0-9])([A-Z])", r"_\1", name).lower()


# Option fields that hold an enum, shown by name.
_ENUM_OPTIONS = {"padding": schema_fb.Padding,
                 "fused_activation_function": schema_fb.ActivationFunctionType}


def _options_and_constants(content, tensors):
    """([(builtin op name, options dict)] of subgraph 0's operators, {index: constant array})."""
    root = schema_fb.Model.GetRootAs(content, 0)
    model = schema_fb.ModelT.InitFromObj(root)
    op_names = _enum_names(schema_fb.BuiltinOperator)
    enum_names = {key: _enum_names(enum) for key, enum in _ENUM_OPTIONS.items()}
    subgraph = model.subgraphs[0]
    found = []
    for operator in subgraph.operators or []:
        code = model.operatorCodes[operator.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        options = {}
        for key, value in (vars(operator.builtinOptions) if operator.builtinOptions is not None else {}).items():
            key = _snake_case(key)
            if key in enum_names:
                value = enum_names[key].get(value, value)
            elif isinstance(value, np.ndarray):
                value = tuple(value.tolist())
            options[key] = value
        found.append((op_names.get(builtin, str(builtin)), options))
    constants = {}
    for index, tensor in enumerate(subgraph.tensors or []):
        info = tensors.get(index)
        if not tensor.buffer or info is None:
            continue
        data = _buffer_data(root, tensor.buffer, content)
        if not data:
            continue
        if tensor.type == schema_fb.TensorType.INT4:
            constants[index] = _unpack_int4(data, info.shape)
        else:
            constants[index] = np.frombuffer(data, np.dtype(info.dtype)).reshape(info.shape)
    return found, constants


def _unpack_int4(data, shape) -> np.ndarray:
    """int8 values of a packed INT4 buffer: two per byte, the low nibble first, signed.

    Example:
      >>> _unpack_int4(bytes([0x7F, 0x08]), (4,)).tolist()
      [-1, 7, -8, 0]
    """
    packed = np.frombuffer(data, np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    values = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)
    return values[:int(np.prod(shape))].reshape(shape)


def _signature_io(interpreter):
    """(input names, input indices, output indices) in the Keras model's order."""
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        (key, signature), = signatures.items()
        runner = interpreter.get_signature_runner(key)
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        if len(in_details) == len(interpreter.get_input_details()) and \
                len(out_details) == len(interpreter.get_output_details()):
            # Keras names its exported outputs output_0, output_1, ... in its own order.
            out_names = sorted(out_details, key=lambda n: (len(n), n))
            return (list(signature["inputs"]),
                    [int(in_details[n]["index"]) for n in signature["inputs"]],
                    [int(out_details[n]["index"]) for n in out_names])
    details = interpreter.get_input_details()
    return ([d["name"] for d in details], [int(d["index"]) for d in details],
            [int(d["index"]) for d in interpreter.get_output_details()])


def _buffer_data(model, buffer_index, content) -> bytes:
    buffer = model.Buffers(buffer_index)
    if buffer.Offset():  # files over 2 GB keep buffers after the flatbuffer
        return bytes(content[buffer.Offset():buffer.Offset() + buffer.Size()])
    return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""


def read_metadata(model) -> dict:
    """{name: bytes} of the metadata entries of a .tflite (bytes or path).

    Example:
      >>> read_metadata(tfqat.export_tflite(qat, allow_float_ops=True))["tfqat_allow_float_ops"]
      b'allow_float_ops=True'
    """
    content = _content(model)
    root = schema_fb.Model.GetRootAs(content, 0)
    entries = {}
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        name = (entry.Name() or b"").decode(errors="replace")
        entries[name] = _buffer_data(root, entry.Buffer(), content)
    return entries


def add_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """The same model with one more metadata entry `name` holding `data`.

    Example:
      >>> marked = add_metadata(flatbuffer, "tfqat_allow_float_ops", b"allow_float_ops=True")
      >>> read_metadata(marked)["tfqat_allow_float_ops"]
      b'allow_float_ops=True'
    """
    content = bytes(flatbuffer)
    model = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAs(content, 0))
    # Files over 2 GB keep buffers and large custom options after the flatbuffer: inline them,
    # since the rewritten flatbuffer moves what follows it.
    for buffer in model.buffers:
        if buffer.offset:
            buffer.data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size],
                                        np.uint8)
            buffer.offset = buffer.size = 0
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            if op.largeCustomOptionsOffset:
                start = op.largeCustomOptionsOffset
                op.customOptions = np.frombuffer(
                    content[start:start + op.largeCustomOptionsSize], np.uint8)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def stored_tensors(model) -> list:
    """A StoredTensor for every tensor of every subgraph of a .tflite (bytes or path).

    Example:
      >>> sum(t.data_bytes for t in stored_tensors(flatbuffer) if t.rank >= 2)  # weight bytes
      52416
    """
    content = _content(model)
    root = schema_fb.Model.GetRootAs(content, 0)
    found = []
    for g in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(g)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            quantization = tensor.Quantization()
            buffer = tensor.Buffer()
            found.append(StoredTensor(
                subgraph=g, index=t, rank=tensor.ShapeLength(), buffer=buffer,
                data_bytes=root.Buffers(buffer).DataLength() if buffer else 0,
                num_scales=quantization.ScaleLength() if quantization is not None else 0,
                num_zero_points=quantization.ZeroPointLength() if quantization is not None else 0))
    return found


def quantize(x, tensor: TensorInfo) -> np.ndarray:
    """Float `x` as the values of `tensor` (its dtype; scale and zero point if it has them).

    Rounds half up, as the QAT model's input FakeQuant does, so the .tflite sees
    the same integers that the QAT model saw as fake-quantized floats.

    Example:
      >>> quantize(np.array([0.0, 0.5, 1.0]), read_tflite(flatbuffer).inputs[0])
      array([-128,    0,  127], dtype=int8)
    """
    dtype = np.dtype(tensor.dtype)
    if not tensor.is_quantized:
        return np.asarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    q = np.floor(np.asarray(x, dtype=np.float64) / tensor.scale + 0.5) + tensor.zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(raw, tensor: TensorInfo, dtype=np.float64) -> np.ndarray:
    """(raw - zero_point) * scale in `dtype`, with `tensor`'s per-tensor quantization.

    Example:
      >>> dequantize(np.array([-128, 127], np.int8), model.outputs[0])
      array([0.        , 0.99609375])
    """
    return (np.asarray(raw).astype(dtype) - tensor.zero_point) * tensor.scale


def read_dequantized(interpreter, tensor: TensorInfo, dtype=np.float64) -> np.ndarray:
    """The current value of `tensor` in `interpreter`, dequantized (see `dequantize`).

    Example:
      >>> interpreter.invoke()
      >>> read_dequantized(interpreter, model.outputs[0]).argmax(-1)
      array([7])
    """
    return dequantize(interpreter.get_tensor(tensor.index), tensor, dtype)


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
    model = read_tflite(model)
    return TFLiteReport(
        size_bytes=len(model.content), ops=model.ops, inputs=model.inputs, outputs=model.outputs,
        float_ops_allowed=FLOAT_OPS_ALLOWED_METADATA in model.metadata)
