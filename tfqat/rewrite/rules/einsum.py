"""Rules for EinsumDense on its own (outside MultiHeadAttention): the equations that are a
Dense, possibly between transposes, and those with a weight per position (BATCH_MATMUL).

An EinsumDense equation `<input>,<kernel>-><output>` is a Dense when every kernel axis is
either contracted (in the input, not the output) or an output axis of its own, and every
other input axis is kept: then x with its contracted axes moved last, viewed as (..., K),
times the kernel viewed as (K, N) is the output, viewed as (..., N), with its axes in the
order (kept input axes, kernel output axes). When the contracted axes are not the last
ones, or the output wants another order, int8 TRANSPOSEs (Permute layers, which keep the
scale) go before or after; the batch axis stays first. The kernel is permuted and reshaped
once, when the weights are copied, so per-channel weights (the 1x1 CONV_2D route of
QuantDense) are per element of the kernel's output axes, and per-tensor ones give
FULLY_CONNECTED. A bias over output axes of the kernel becomes the Dense bias.

An axis in the input, the kernel and the output (`abc,bcd->abd`) is a weight per
position: QuantEinsumBatchMatMul, one BATCH_MATMUL with a constant per-tensor int8
operand (no bias: BATCH_MATMUL has none, so a bias is refused). Other equations (an axis
summed away, a moved batch axis, a bias along an input axis) are refused with the
equation named.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfqat.nn import layers as qlayers
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.rewrite.rules.activations import RELU_TAIL, activation_kind
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step, clone_layer


@dataclasses.dataclass(frozen=True)
class DenseForm:
    """How an EinsumDense equation is a Dense: the kernel permutation, the view sizes and
    the transposes around it (None where the axes are already in order)."""

    contracted: str  # the input's axes that the kernel contracts, in input order
    kernel_out: str  # the kernel's output axes, in output order
    kernel_perm: tuple  # kernel axes permuted to (contracted..., kernel_out...)
    input_perm: tuple | None = None  # input axes -> (free..., contracted...), batch first
    output_perm: tuple | None = None  # (free..., kernel_out...) -> the output's axes


def is_einsum_dense(layer) -> bool:
    """EinsumDense (exact class)."""
    return type(layer) is keras.layers.EinsumDense


def _parse(equation):
    text = equation.replace(" ", "")
    if "->" not in text or text.count(",") != 1:
        return None
    operands, output = text.split("->")
    source, kernel = operands.split(",")
    ellipsis = source.startswith("...") and output.startswith("...")
    if ellipsis:
        source, output = source[3:], output[3:]
    if "." in source + kernel + output or any(len(set(t)) != len(t) for t in (source, kernel, output)):
        return None
    return source, kernel, output, ellipsis


def shared_kernel_axes(equation: str) -> str:
    """The axes that the input, the kernel and the output all have (a weight per position:
    a BATCH_MATMUL with a constant operand, not a Dense).

    Example:
      >>> shared_kernel_axes("abc,bcd->abd"), shared_kernel_axes("abc,cd->abd")
      ('b', '')
    """
    parsed = _parse(equation)
    if parsed is None:
        return ""
    source, kernel, output, _ = parsed
    return "".join(c for c in source if c in kernel and c in output)


def dense_form(equation: str) -> DenseForm | None:
    """The DenseForm of an EinsumDense equation, or None if it is not a Dense, possibly
    between transposes of the non-batch axes.

    The input's axes that the kernel contracts are moved last (a TRANSPOSE in front when
    they are not), the Dense gives (free axes..., kernel axes...), and a TRANSPOSE after it
    puts those in the output's order. The batch axis (the first, or the ellipsis) stays first.

    Example:
      >>> dense_form("abc,cde->abde").kernel_out, dense_form("abc,cd->abd").contracted
      ('de', 'c')
      >>> dense_form("abc,bd->adc").input_perm, dense_form("abc,bd->adc").output_perm
      ((0, 2, 1), (0, 2, 1))
      >>> dense_form("abc,bcd->abd") is None  # the weight depends on axis b
      True
    """
    parsed = _parse(equation)
    if parsed is None:
        return None
    source, kernel, output, ellipsis = parsed
    contracted = "".join(c for c in source if c in kernel and c not in output)
    free = "".join(c for c in source if c not in contracted)
    kernel_out = "".join(c for c in output if c in kernel and c not in source)
    if (not contracted or set(free) & set(kernel) or set(output) != set(free + kernel_out)
            or set(kernel) != set(contracted + kernel_out)):
        return None
    input_perm = tuple(source.index(c) for c in free + contracted)
    output_perm = tuple((free + kernel_out).index(c) for c in output)
    identity = lambda perm: perm == tuple(range(len(perm)))
    if not (identity(input_perm) and identity(output_perm)):
        # The transposes move named axes only: the batch axis must be the first one.
        if ellipsis or not free or source[0] != free[0] or output[0] != free[0]:
            return None
    return DenseForm(contracted, kernel_out, tuple(kernel.index(c) for c in contracted + kernel_out),
                     None if identity(input_perm) else input_perm,
                     None if identity(output_perm) else output_perm)


def is_batch_matmul_form(equation: str) -> bool:
    """Whether an equation with a weight per position of some input axes (shared by the
    input, the kernel and the output) is a BATCH_MATMUL: every input axis is kept or
    contracted, the kernel's other axes are contracted or output axes, and the batch axis
    (the first) is neither shared nor contracted and stays first. No ellipsis.

    Example:
      >>> is_batch_matmul_form("abc,bcd->abd"), is_batch_matmul_form("abc,bc->ab")
      (True, False)
    """
    parsed = _parse(equation)
    if parsed is None or parsed[3]:
        return False
    source, kernel, output, _ = parsed
    shared = shared_kernel_axes(equation)
    contracted = "".join(c for c in source if c in kernel and c not in output)
    free = "".join(c for c in source if c not in kernel)
    kernel_out = "".join(c for c in output if c in kernel and c not in source)
    return bool(shared and contracted and kernel_out and free) and free[0] == source[0] == \
        output[0] and set(output) == set(shared + free + kernel_out) and \
        set(kernel) == set(shared + contracted + kernel_out)


def build_einsum_batch_matmul(einsum, relu, cfg) -> Replacement:
    """An EinsumDense with a weight per position as QuantEinsumBatchMatMul [+ ReLU]."""
    if einsum.bias is not None:
        raise _refusal(einsum, "has a weight per position of axis "
                               f"'{shared_kernel_axes(einsum.equation)}' (an int8 BATCH_MATMUL "
                               "with a constant operand) and a bias, which BATCH_MATMUL cannot "
                               "fuse; use bias_axes=None and add the bias in a separate layer")
    layer = qlayers.QuantEinsumBatchMatMul(
        einsum.equation, tuple(einsum.kernel.shape), weight_bits=cfg.weight_bits,
        quant_delay=cfg.quant_delay, name=einsum.name)
    layers = [layer]
    if relu is not None:
        # BATCH_MATMUL has no fused activation: the ReLU is its own int8 RELU.
        layers += [ActivationQuantizer(bits=cfg.activation_bits, ema_decay=cfg.ema_decay,
                                       quant_delay=cfg.quant_delay, name=f"{einsum.name}_fq"),
                   clone_layer(relu)]

    def load():
        kernel = np.transpose(keras.ops.convert_to_numpy(einsum.kernel), layer.kernel_perm)
        layer.kernel.assign(kernel.reshape(layer.kernel.shape))

    return Replacement(layers, TRACKED, load)


def _refusal(layer, reason):
    return ValueError(
        f"EinsumDense '{layer.name}' with equation '{layer.equation}'"
        f"{'' if layer.bias_axes is None else f' and bias_axes={layer.bias_axes!r}'} {reason}; "
        "tfqat quantizes an EinsumDense that is a Dense, possibly between transposes of the "
        "non-batch axes (such as 'abc,cd->abd', 'abc,cde->abde', 'abde,dec->abc', "
        "'abc,bd->adc', 'abc,cde->adbe'), with a bias only on the kernel's output axes, or "
        "one with a weight per position and no bias ('abc,bcd->abd', a BATCH_MATMUL). Leave "
        f"it in float with QuantConfig(exclude=('{layer.name}',)), or rewrite it as Dense, "
        "Permute and Reshape layers.")


def build_einsum_dense(match, cfg) -> Replacement:
    """EinsumDense [+ ReLU/ReLU6] as RESHAPE, QuantDense, RESHAPE, then a tracked fake quant.

    Example:
      >>> layer = keras.layers.EinsumDense("abc,cde->abde", (6, 2, 3), bias_axes="de")
      >>> layer.build((None, 6, 4))
      >>> [type(l).__name__ for l in build_einsum_dense({"einsum": layer}, LayerQuantConfig()).layers]
      ['QuantDense', 'ReshapeTrailingAxes']
    """
    einsum, relu = match["einsum"], match.get("relu")
    form = dense_form(einsum.equation)
    if getattr(einsum, "quantization_mode", None) is not None or einsum.lora_enabled:
        raise _refusal(einsum, "is already quantized by Keras or has LoRA enabled")
    shared = shared_kernel_axes(einsum.equation)
    if form is None and is_batch_matmul_form(einsum.equation):
        return build_einsum_batch_matmul(einsum, relu, cfg)
    if form is None and shared:
        raise _refusal(einsum, f"has a weight per position of axis '{shared}' but is not a "
                               "BATCH_MATMUL (the batch axis is shared or contracted, or an "
                               "axis is summed away)")
    if form is None:
        raise _refusal(einsum, "is not a Dense between transposes of the non-batch axes (it "
                               "sums an axis away, moves the batch axis, or transposes "
                               "the axes of an ellipsis)")
    if einsum.bias_axes is not None and not set(einsum.bias_axes) <= set(form.kernel_out):
        raise _refusal(einsum, "adds a bias along an axis of the input")
    kernel = np.transpose(keras.ops.convert_to_numpy(einsum.kernel), form.kernel_perm)
    contracted_dims = kernel.shape[:len(form.contracted)]
    out_dims = kernel.shape[len(form.contracted):]
    size_in, size_out = int(np.prod(contracted_dims)), int(np.prod(out_dims))
    dense = qlayers.QuantDense(
        size_out, use_bias=einsum.bias is not None,
        activation=activation_kind(relu) if relu is not None else None,
        weight_bits=cfg.weight_bits, per_channel=cfg.per_channel, quant_delay=cfg.quant_delay,
        name=einsum.name)
    layers = [dense]
    if len(contracted_dims) > 1:
        layers.insert(0, qlayers.ReshapeTrailingAxes(len(contracted_dims), (size_in,),
                                                     name=f"{einsum.name}_flatten"))
    if len(out_dims) != 1:
        layers.append(qlayers.ReshapeTrailingAxes(1, out_dims, name=f"{einsum.name}_split"))
    # Int8 TRANSPOSEs, which keep the scale: the output fake quant after the last one is
    # the Dense's too.
    if form.input_perm is not None:
        layers.insert(0, keras.layers.Permute(form.input_perm[1:], name=f"{einsum.name}_transpose_in"))
    if form.output_perm is not None:
        layers.append(keras.layers.Permute(form.output_perm[1:], name=f"{einsum.name}_transpose_out"))

    def load():
        dense.kernel.assign(kernel.reshape(size_in, size_out))
        if dense.bias is not None:
            dense.bias.assign(_dense_bias(einsum, form, out_dims).reshape(size_out))

    return Replacement(layers, TRACKED, load)


def _dense_bias(einsum, form, out_dims):
    """The EinsumDense bias over the kernel's output axes, in the Dense's order.

    Keras aligns the bias with the output's trailing axes (size 1 on the others)."""
    _, _, output, _ = _parse(einsum.equation)
    bias = keras.ops.convert_to_numpy(einsum.bias)
    bias = bias.reshape((1,) * (len(output) - bias.ndim) + bias.shape)
    # The bias axes are kernel output axes (checked), so the others have size 1; kernel_out
    # is in the output's order, so dropping them leaves the Dense's order.
    return np.broadcast_to(bias.reshape([bias.shape[output.index(c)] for c in form.kernel_out]),
                           out_dims)


RULES = (
    RewriteRule("einsum_dense_relu", (Step("einsum", is_einsum_dense), RELU_TAIL),
                build_einsum_dense),
)
