"""Rules for Embedding (an int8 GATHER) and PositionEmbedding (an int8 ADD of a table)."""

from __future__ import annotations

import keras

from tfqat.nn.embedding import PositionEmbedding, QuantEmbedding, QuantPositionEmbedding
from tfqat.rewrite.rules.base import SCALE_PRESERVING, TRACKED, Replacement, RewriteRule, Step


def is_embedding(layer) -> bool:
    """Embedding (exact class)."""
    return type(layer) is keras.layers.Embedding


def build_embedding(match, cfg) -> Replacement:
    """Embedding as GATHER from an int8 table; its rows keep the table's scale (no fake quant).

    Example:
      >>> r = build_embedding({"embedding": keras.layers.Embedding(10, 4)}, LayerQuantConfig())
      >>> type(r.layers[0]).__name__, r.output.kind
      ('QuantEmbedding', 'none')
    """
    embedding = match["embedding"]
    if embedding.mask_zero:
        raise ValueError(
            f"Embedding '{embedding.name}' has mask_zero=True; tfqat does not carry Keras masks "
            "into the QAT model, so later layers would attend to padding. Build it with "
            "mask_zero=False (use MultiHeadAttention(use_causal_mask=True) or pooling that "
            f"ignores padding), or leave it in float with QuantConfig(exclude=('{embedding.name}',)).")
    if getattr(embedding, "lora_rank", None) or getattr(embedding, "quantization_mode", None):
        raise ValueError(f"Embedding '{embedding.name}' uses LoRA or Keras quantization; tfqat "
                         "quantizes a plain Embedding only. Merge or remove it first.")
    layer = QuantEmbedding(embedding.input_dim, embedding.output_dim,
                           weight_bits=cfg.weight_bits, quant_delay=cfg.quant_delay,
                           name=embedding.name)
    return Replacement([layer], SCALE_PRESERVING,
                       lambda: layer.embeddings.assign(embedding.embeddings))


def is_position_embedding(layer) -> bool:
    """tfqat.nn.embedding.PositionEmbedding (exact class)."""
    return type(layer) is PositionEmbedding


def build_position_embedding(match, cfg) -> Replacement:
    """x + table as an int8 ADD of an int8 table, then a tracked fake quant."""
    position = match["position"]
    layer = QuantPositionEmbedding(weight_bits=cfg.weight_bits, quant_delay=cfg.quant_delay,
                                   name=position.name)
    return Replacement([layer], TRACKED, lambda: layer.table.assign(position.table))


RULES = (
    RewriteRule("embedding", (Step("embedding", is_embedding),), build_embedding),
    RewriteRule("position_embedding", (Step("position", is_position_embedding),),
                build_position_embedding),
)
