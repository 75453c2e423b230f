"""The rule types (a pattern of layer predicates plus a replacement builder) and the
builders shared by several rule families."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from tfqat.rewrite.graph import keras_op_name  # noqa: F401 (part of the rule API)


@dataclasses.dataclass(frozen=True)
class Step:
    """One position of a pattern: a named predicate on a layer."""

    name: str
    matches: Callable[[keras.layers.Layer], bool]
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class OutputQuant:
    """What follows the replacement: nothing, a tracked range or a fixed range."""

    kind: str  # "none" | "tracked" | "fixed" | "input"
    fixed_range: tuple | None = None


SCALE_PRESERVING = OutputQuant("none")


TRACKED = OutputQuant("tracked")


# The output is rounded to the input's scale: the input's quantizer is applied again (tied).
INPUT_SCALE = OutputQuant("input")


@dataclasses.dataclass
class Replacement:
    """Layers to call in a chain in place of the matched nodes.

    `load_weights` runs once the layers are built (they are built when the
    rebuilt graph calls them).
    """

    layers: list
    output: OutputQuant
    load_weights: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class RewriteRule:
    name: str
    pattern: tuple  # of Step
    build: Callable  # (match: dict[str, Layer | None], cfg: LayerQuantConfig) -> Replacement
    keeps_layers: bool = False  # the replacement is a copy of the matched Keras layers


def clone_layer(layer):
    """A fresh layer of the same class and config (weights are copied later), in float32."""
    return type(layer).from_config(float32_config(layer))


def float32_dtype(layer):
    """The dtype policy a copy of `layer` gets in the QAT model: float32 for a float layer.

    The QAT model computes in float32 whatever the global policy: the int8 model
    accumulates exactly in int32, which float16/bfloat16 compute would not
    reproduce, and the fake-quant kernels take float32 only. A layer with a
    non-float policy (an integer lookup) keeps its own.
    """
    policy = layer.dtype_policy
    floating = {"float16", "bfloat16", "float32"}
    if policy.compute_dtype in floating or policy.variable_dtype in floating:
        return "float32"
    return policy


def float32_config(layer) -> dict:
    """layer.get_config() with the dtype policy of `float32_dtype`."""
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = float32_dtype(layer)
    return config


def _copy_weights(pairs):
    def load():
        for new, old in pairs:
            if isinstance(old, keras.layers.Layer):  # Keras ops have no weights
                new.set_weights(old.get_weights())
    return load


def _channels_last_check(layer):
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format != "channels_last":
        raise ValueError(
            f"Layer '{layer.name}' uses data_format={data_format!r}; tfqat supports "
            "channels_last only. Rebuild the model channels_last, or exclude the layer.")


def _clone_chain(match, output):
    originals = [layer for layer in match.values() if layer is not None]
    clones = [clone_layer(layer) for layer in originals]
    return Replacement(clones, output, _copy_weights(list(zip(clones, originals))))


def build_tracked(match, cfg) -> Replacement:
    """The same layers, with a tracked-range fake quant on the output."""
    return _clone_chain(match, TRACKED)


def build_scale_preserving(match, cfg) -> Replacement:
    """The same layer; its output keeps its input's scale, so no fake quant."""
    return _clone_chain(match, SCALE_PRESERVING)


def build_same_scale(match, cfg) -> Replacement:
    """The same layer; its output is rounded to its input's scale (see is_same_scale_op)."""
    return _clone_chain(match, INPUT_SCALE)


