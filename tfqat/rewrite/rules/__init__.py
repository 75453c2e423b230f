"""Rewrite rules: each is a pattern (a chain of layer predicates) plus a builder
that makes the quantized replacement. `quantize_model` tries them in order.

A chain continues to the next layer only when that layer is the sole consumer
of the previous output, so a fused tensor is never needed elsewhere.

The rule types live in `base`; the rules themselves are grouped by family:
`linear` (convolutions, Dense, BatchNormalization), `preprocessing`, `merges`,
`activations` and `pooling` (pooling and shape ops).
"""

from __future__ import annotations

from tfqat.rewrite.rules import (activations, applications, attention, einsum, embedding,
                                 inference_only, keras_ops, linear, merges, normalization,
                                 pooling, preprocessing, recurrent)
from tfqat.rewrite.rules.activations import (activation_kind, build_decomposed_activation,
                                             build_fixed_range, has_fixed_range,
                                             is_decomposed_activation, is_fusable_relu,
                                             is_single_op_activation)
from tfqat.rewrite.rules.base import (INPUT_SCALE, SCALE_PRESERVING, TRACKED, OutputQuant,
                                      Replacement, RewriteRule, Step, build_same_scale,
                                      build_scale_preserving, build_tracked, clone_layer,
                                      float32_config, float32_dtype,
                                      keras_op_name)
from tfqat.rewrite.rules.linear import (build_fused_linear, build_separable,
                                        build_standalone_batchnorm, is_batchnorm, is_linear,
                                        is_separable, takes_activation_argument)
from tfqat.rewrite.rules.merges import (DIVISION_OPS, divides_by_tensor, is_merge,
                                        merges_more_than_two)
from tfqat.rewrite.rules.pooling import (is_global_average_pool, is_resize, is_same_scale_op,
                                         is_scale_preserving)
from tfqat.rewrite.rules.keras_ops import is_concatenation
from tfqat.rewrite.rules.preprocessing import build_channel_affine, is_channel_affine
__all__ = ["DIVISION_OPS", "INPUT_SCALE", "OutputQuant", "RULES", "SCALE_PRESERVING", "TRACKED", "activation_kind", "activations", "applications", "attention", "einsum", "build_channel_affine", "build_decomposed_activation", "build_fused_linear", "build_separable", "divides_by_tensor", "embedding", "inference_only", "is_channel_affine", "is_concatenation", "keras_ops", "is_global_average_pool", "is_merge", "is_resize", "is_same_scale_op", "linear", "merges", "normalization", "pooling", "preprocessing", "recurrent"]

# The default table, in matching order: fused linear blocks first, so that a BN or ReLU
# after a conv is folded into it rather than matched on its own.
RULES = (*linear.RULES, *preprocessing.RULES, *merges.RULES, *pooling.GLOBAL_POOL_RULES,
         *activations.RULES, *pooling.SHAPE_RULES, *normalization.RULES,
         *attention.RULES, *einsum.RULES, *embedding.RULES, *recurrent.RULES, *inference_only.RULES, *applications.RULES,
         *keras_ops.RULES)

