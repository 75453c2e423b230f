"""Quantization settings: one global `QuantConfig` plus per-layer overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

MIN_BITS, MAX_BITS = 2, 16
EXPORT_MAX_BITS = 8

# Fields that may be set per layer through `QuantConfig.overrides`.
LAYER_FIELDS = (
    "weight_bits",
    "activation_bits",
    "per_channel",
    "ema_decay",
    "quant_delay",
    "bn_freeze_delay",
    "bn_fold",
)

BN_FOLD_MODES = ("exact", "approximate")


@dataclasses.dataclass(frozen=True)
class LayerQuantConfig:
    """The settings that apply to one layer, after overrides are resolved."""

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    ema_decay: float = 0.999
    quant_delay: int = 0
    bn_freeze_delay: int | None = None
    bn_fold: str = "exact"

    def __post_init__(self):
        _validate_fields(self, where="QuantConfig")


@dataclasses.dataclass(frozen=True)
class QuantConfig(LayerQuantConfig):
    """How `quantize_model` quantizes a model.

    Args:
      weight_bits: bits of the symmetric, narrow-range weight quantizer (2..16).
      activation_bits: bits of the asymmetric activation quantizers (2..16).
      per_channel: one weight range per output channel (else per tensor).
      ema_decay: decay of the moving average of activation min/max.
      quant_delay: training steps during which values pass unquantized while
        activation ranges are already tracked.
      bn_freeze_delay: training step from which folded BatchNorm layers use
        their moving statistics and stop updating them; None never freezes.
      bn_fold: how a folded BatchNorm trains before the freeze. "exact" (default)
        normalizes with the batch statistics of the unquantized convolution, a
        second convolution per step; "approximate" takes them from the quantized
        folded convolution's output rescaled by sigma_mv / gamma, one
        convolution per step (faster, gradients not exact; see docs/design.md).
      exclude: layer names or layer classes to leave in float.
      overrides: layer name -> dict of the fields above, for that layer only.

    Example:
      >>> cfg = QuantConfig(bn_freeze_delay=200, exclude=("logits",),
      ...                   overrides={"conv1": {"weight_bits": 4}})
      >>> cfg.for_layer("conv1").weight_bits
      4
    """

    exclude: tuple = ()
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.exclude, (str, type)):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for item in self.exclude:
            if not isinstance(item, (str, type)):
                raise ValueError(
                    f"QuantConfig.exclude holds {item!r}; give layer names (str) "
                    "or layer classes.")
        if not isinstance(self.overrides, Mapping):
            raise ValueError("QuantConfig.overrides must map layer names to dicts of fields.")
        for name, fields in self.overrides.items():
            unknown = set(fields) - set(LAYER_FIELDS)
            if unknown:
                raise ValueError(
                    f"QuantConfig.overrides[{name!r}] has unknown fields {sorted(unknown)}; "
                    f"allowed: {', '.join(LAYER_FIELDS)}.")
            # Validates the values at construction time.
            self._resolve(fields, where=f"QuantConfig.overrides[{name!r}]")

    def _resolve(self, fields, where):
        base = {f: getattr(self, f) for f in LAYER_FIELDS}
        base.update(fields)
        try:
            return LayerQuantConfig(**base)
        except ValueError as err:
            raise ValueError(str(err).replace("QuantConfig", where, 1)) from None

    def for_layer(self, name: str) -> LayerQuantConfig:
        """The settings for the layer called `name`, overrides applied."""
        return self._resolve(self.overrides.get(name, {}), where=f"QuantConfig.overrides[{name!r}]")

    def is_excluded(self, layer) -> bool:
        """True when `layer` (a Keras layer) is to stay in float."""
        for item in self.exclude:
            if isinstance(item, str) and item == layer.name:
                return True
            if isinstance(item, type) and isinstance(layer, item):
                return True
        return False

    def check_layer_names(self, known_names: Iterable[str]) -> None:
        """Raises when exclude or overrides name a layer that the model lacks."""
        known = set(known_names)
        named = [n for n in self.exclude if isinstance(n, str)] + list(self.overrides)
        missing = sorted({n for n in named if n not in known})
        if missing:
            raise ValueError(
                f"QuantConfig names layers that are not in the model: {missing}. "
                f"Layer names in the model: {sorted(known)}.")

    def to_dict(self) -> dict:
        """A JSON-friendly dict; classes in `exclude` become their names."""
        out = {f: getattr(self, f) for f in LAYER_FIELDS}
        out["exclude"] = [e if isinstance(e, str) else e.__name__ for e in self.exclude]
        out["overrides"] = {k: dict(v) for k, v in self.overrides.items()}
        return out


def _validate_fields(cfg, where: str) -> None:
    for field in ("weight_bits", "activation_bits"):
        bits = getattr(cfg, field)
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(
                f"{where}.{field}={bits!r}: bits must be an integer in {MIN_BITS}..{MAX_BITS}.")
    if not isinstance(cfg.per_channel, bool):
        raise ValueError(f"{where}.per_channel={cfg.per_channel!r}: must be True or False.")
    if not 0.0 < float(cfg.ema_decay) < 1.0:
        raise ValueError(f"{where}.ema_decay={cfg.ema_decay!r}: must lie strictly between 0 and 1.")
    if cfg.bn_fold not in BN_FOLD_MODES:
        raise ValueError(f"{where}.bn_fold={cfg.bn_fold!r}: must be one of {BN_FOLD_MODES}.")
    for field in ("quant_delay", "bn_freeze_delay"):
        value = getattr(cfg, field)
        if value is None and field == "bn_freeze_delay":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"{where}.{field}={value!r}: must be a non-negative integer"
                + (" or None." if field == "bn_freeze_delay" else "."))
