"""Rules for EinsumDense on its own (outside MultiHeadAttention): the equations that are a
Dense on the trailing axes, run as tfqat's QuantDense between two RESHAPEs.

An EinsumDense equation `<input>,<kernel>-><output>` is a Dense when the input's last
axes are the contracted ones (also the kernel's, in any order), no kernel axis is also an
output axis of the input, and the output is the input's other axes followed by the
kernel's own axes: then x viewed as (..., K) times the kernel viewed as (K, N) is the
output viewed as (..., N). The kernel is permuted and reshaped once, when the weights are
copied, so per-channel weights (the 1x1 CONV_2D route of QuantDense) are per element of
the kernel's output axes, and per-tensor ones give FULLY_CONNECTED. A bias over output
axes of the kernel becomes the Dense bias. Other equations (a weight shared along a
batch-like axis, which would be BATCH_MATMUL with a constant; a transposed input; a bias
along an input axis) are refused with the equation named.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfqat.nn import layers as qlayers
from tfqat.rewrite.rules.activations import RELU_TAIL, activation_kind
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step


@dataclasses.dataclass(frozen=True)
class DenseForm:
    """How an EinsumDense equation is a Dense: the kernel permutation and the view sizes."""

    contracted: str  # the input's trailing axes that the kernel contracts, in input order
    kernel_out: str  # the kernel's output axes, in output order
    kernel_perm: tuple  # kernel axes permuted to (contracted..., kernel_out...)


def is_einsum_dense(layer) -> bool:
    """EinsumDense (exact class)."""
    return type(layer) is keras.layers.EinsumDense


def dense_form(equation: str) -> DenseForm | None:
    """The DenseForm of an EinsumDense equation, or None if it is not a Dense on trailing axes.

    Example:
      >>> dense_form("abc,cde->abde").kernel_out, dense_form("abc,cd->abd").contracted
      ('de', 'c')
      >>> dense_form("abc,bcd->abd") is None  # the weight depends on axis b
      True
    """
    text = equation.replace(" ", "")
    if "->" not in text or text.count(",") != 1:
        return None
    operands, output = text.split("->")
    source, kernel = operands.split(",")
    if source.startswith("...") and output.startswith("..."):
        source, output = source[3:], output[3:]
    if "." in source + kernel + output or len(set(kernel)) != len(kernel):
        return None
    contracted = "".join(c for c in source if c in kernel and c not in output)
    free = "".join(c for c in source if c not in contracted)
    kernel_out = "".join(c for c in output if c in kernel and c not in source)
    if (not contracted or source != free + contracted or output != free + kernel_out
            or set(kernel) != set(contracted + kernel_out)):
        return None
    return DenseForm(contracted, kernel_out, tuple(kernel.index(c) for c in contracted + kernel_out))


def _refusal(layer, reason):
    return ValueError(
        f"EinsumDense '{layer.name}' with equation '{layer.equation}'"
        f"{'' if layer.bias_axes is None else f' and bias_axes={layer.bias_axes!r}'} {reason}; "
        "tfqat quantizes an EinsumDense that is a Dense on the input's trailing axes (such as "
        "'ab,bc->ac', 'abc,cd->abd', 'abc,cde->abde', 'abde,dec->abc'), with a bias only on "
        "the kernel's output axes. Leave it in float with "
        f"QuantConfig(exclude=('{layer.name}',)), or rewrite it as Dense and Reshape layers.")


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
    if form is None:
        raise _refusal(einsum, "is not a Dense on the input's trailing axes (it would need "
                               "BATCH_MATMUL with a constant, a transpose or a reduction)")
    if einsum.bias_axes is not None and not set(einsum.bias_axes) <= set(form.kernel_out):
        raise _refusal(einsum, "adds a bias along an axis of the input")
    if getattr(einsum, "quantization_mode", None) is not None or einsum.lora_enabled:
        raise _refusal(einsum, "is already quantized by Keras or has LoRA enabled")
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

    def load():
        dense.kernel.assign(kernel.reshape(size_in, size_out))
        if dense.bias is not None:
            bias = keras.ops.convert_to_numpy(einsum.bias)
            dense.bias.assign(np.broadcast_to(bias, out_dims).reshape(size_out))

    return Replacement(layers, TRACKED, load)


RULES = (
    RewriteRule("einsum_dense_relu", (Step("einsum", is_einsum_dense), RELU_TAIL),
                build_einsum_dense),
)
