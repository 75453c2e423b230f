"""Shared by the command-line apps: one-line errors and flag -> config helpers."""

from __future__ import annotations

import sys

from absl import flags, logging


def fail(program: str, message: str) -> None:
    """Prints one line naming the program and exits with code 2."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def quiet_logging() -> None:
    """TF's INFO lines drown a command's own output; -v/--verbosity still turns them on."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def define_quant_flags() -> None:
    """One flag per QuantConfig field that makes sense on a command line."""
    flags.DEFINE_integer("weight_bits", 8, "Bits of the weight quantizers (2..16; export needs <= 8).")
    flags.DEFINE_integer("activation_bits", 8, "Bits of the activation quantizers (2..16).")
    flags.DEFINE_boolean("per_channel", True, "Per-output-channel weight ranges.")
    flags.DEFINE_float("ema_decay", 0.999, "Decay of the activation range moving averages.")
    flags.DEFINE_integer("quant_delay", 0, "QAT steps before quantization starts.")
    flags.DEFINE_integer("bn_freeze_delay", None, "QAT step from which folded BatchNorms use "
                         "moving statistics; unset never freezes.")
    flags.DEFINE_list("exclude", [], "Layer names to leave in float.")


def quant_config_from_flags(values):
    from tfqat.config import QuantConfig

    return QuantConfig(
        weight_bits=values.weight_bits, activation_bits=values.activation_bits,
        per_channel=values.per_channel, ema_decay=values.ema_decay,
        quant_delay=values.quant_delay, bn_freeze_delay=values.bn_freeze_delay,
        exclude=tuple(values.exclude))
