"""Rules for attention: MultiHeadAttention as int8 FULLY_CONNECTED, BATCH_MATMUL and SOFTMAX
(tfqat.nn.attention.QuantMultiHeadAttention)."""

from __future__ import annotations

import keras

from tfqat.nn.attention import QuantMultiHeadAttention
from tfqat.rewrite.rules.activations import RELU_TAIL
from tfqat.rewrite.rules.base import TRACKED, Replacement, RewriteRule, Step, clone_layer
from tfqat.rewrite import graph


def is_multi_head_attention(layer) -> bool:
    """MultiHeadAttention (exact class)."""
    return type(layer) is keras.layers.MultiHeadAttention


def uses_unsupported_attention_call(node) -> bool:
    """Whether a graph node calls MultiHeadAttention with return_attention_scores=True
    (tfqat quantizes attention returning its output only; a float, bool or int32
    attention_mask is fine).

    Example:
      >>> x = keras.Input((6, 8))
      >>> out = keras.layers.MultiHeadAttention(2, 4)(x, x, return_attention_scores=True)
      >>> model = keras.Model(x, out[0])
      >>> uses_unsupported_attention_call(tfqat.rewrite.graph.flatten_model(model).nodes[0])
      True
    """
    return is_multi_head_attention(node.layer) and \
        bool(node.kwargs.get("return_attention_scores", False))


def unsupported_attention_call_message(node) -> str:
    name = node.layer.name
    return (f"Cannot quantize MultiHeadAttention '{name}': it is called with "
            "return_attention_scores=True. tfqat quantizes attention returning the output "
            f"only. Leave the layer in float with QuantConfig(exclude=('{name}',)).")


def _attention_settings_check(mha):
    problems = []
    if mha._use_gate:
        problems.append("use_gate=True")
    if mha._sliding_window is not None:
        problems.append(f"sliding_window={mha._sliding_window}")
    if mha._attention_axes not in (None, (1,), [1]):
        problems.append(f"attention_axes={mha._attention_axes}")
    if graph.attention_output_shape(mha) is not None and len(graph.attention_output_shape(mha)) != 1:
        problems.append(f"output_shape={graph.attention_output_shape(mha)}")
    if problems:
        raise ValueError(
            f"MultiHeadAttention '{mha.name}' uses {', '.join(problems)}; tfqat quantizes "
            "attention over the sequence axis of (batch, length, features) inputs, with a "
            "single output dimension and no gate or sliding window. Leave it in float with "
            f"QuantConfig(exclude=('{mha.name}',)), or rebuild it without these settings.")


def build_multi_head_attention(match, cfg) -> Replacement:
    """MultiHeadAttention as per-tensor int8 projections, BATCH_MATMULs and SOFTMAX [+ a
    ReLU/ReLU6, which TFLite fuses into the output projection's FULLY_CONNECTED, so its
    output is rounded once, after the ReLU], then a tracked fake quant.

    Example:
      >>> mha = keras.layers.MultiHeadAttention(2, 4)
      >>> type(build_multi_head_attention({"attention": mha}, LayerQuantConfig()).layers[0]).__name__
      'QuantMultiHeadAttention'
    """
    mha = match["attention"]
    _attention_settings_check(mha)
    layer = QuantMultiHeadAttention(
        num_heads=mha._num_heads, key_dim=mha._key_dim, value_dim=mha._value_dim,
        use_bias=mha._use_bias, dropout=mha._dropout,
        output_dim=None if graph.attention_output_shape(mha) is None else graph.attention_output_shape(mha)[0],
        weight_bits=cfg.weight_bits, activation_bits=cfg.activation_bits,
        ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay, name=mha.name)
    layers = [layer]
    if match.get("relu") is not None:
        layers.append(clone_layer(match["relu"]))
    return Replacement(layers, TRACKED, lambda: layer.load_float_weights(mha))


RULES = (
    RewriteRule("multi_head_attention", (Step("attention", is_multi_head_attention), RELU_TAIL),
                build_multi_head_attention),
)
