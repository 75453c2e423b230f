"""Shared by the command-line apps: one-line errors, grouped --help, flag -> config helpers."""

from __future__ import annotations

import sys

from absl import flags, logging

HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-?")


def fail(program: str, message: str) -> None:
    """Prints one line naming the program and exits with code 2."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def quiet_logging() -> None:
    """TF's INFO lines drown a command's own output; -v/--verbosity still turns them on."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def apply_verbose(verbose: bool) -> None:
    """--verbose: TensorFlow's own output comes back (tfqat.logs reads TFQAT_VERBOSE)."""
    import os

    if verbose:
        os.environ["TFQAT_VERBOSE"] = "1"
        logging.set_verbosity(logging.INFO)


def define_verbose_flag() -> None:
    flags.DEFINE_boolean("verbose", False, "Show TensorFlow's and Keras's own logs and warnings "
                         "(C++ logging, export listings, converter warnings).")


def define_quant_flags() -> None:
    """One flag per QuantConfig field that makes sense on a command line."""
    flags.DEFINE_integer("weight_bits", 8, "Bits of the weight quantizers (2..16; export needs <= 8).")
    flags.DEFINE_integer("activation_bits", 8, "Bits of the activation quantizers (2..16; the "
                         "int8 export needs 8).")
    flags.DEFINE_boolean("per_channel", True, "Per-output-channel weight ranges.")
    flags.DEFINE_float("ema_decay", 0.999, "Decay of the activation range moving averages.")
    flags.DEFINE_integer("quant_delay", 0, "QAT steps before quantization starts.")
    flags.DEFINE_integer("bn_freeze_delay", None, "QAT step from which folded BatchNorms use "
                         "moving statistics; unset never freezes.")
    flags.DEFINE_enum("bn_fold", "exact", ["exact", "approximate"], "How folded BatchNorms "
                      "train before the freeze: exact (two convolutions per step) or approximate "
                      "(one; statistics from the quantized convolution).")
    flags.DEFINE_list("exclude", [], "Layer names to leave in float.")


QUANT_FLAGS = ("weight_bits", "activation_bits", "per_channel", "ema_decay", "quant_delay",
               "bn_freeze_delay", "bn_fold", "exclude")


def help_text(program: str, doc: str, groups) -> str:
    """The app's docstring, then its flags under their group titles.

    groups: (title, flag names) pairs; every flag the app defines should be in one.
    """
    lines = [doc.strip(), ""]
    for title, names in groups:
        lines.append(f"{title}:")
        for name in names:
            flag = flags.FLAGS[name]
            spelled = f"--[no]{name}" if flag.boolean else f"--{name}"
            default = "" if flag.default is None else f" (default: {flag.default_as_str})"
            lines.append(f"  {spelled}{default}")
            lines.append(f"      {flag.help}")
        lines.append("")
    lines.append(f"Run `{program} --helpfull` for absl's own flags too.")
    return "\n".join(lines)


def flags_parser(program: str, doc: str, groups):
    """A flags_parser for absl.app.run: grouped --help (exit 0), and every parse error
    as one line with exit code 2.

    Example:
      >>> app.run(main, flags_parser=flags_parser("tfqat-train", __doc__, GROUPS))
    """
    def parse(argv):
        if any(arg in HELP_ARGS for arg in argv[1:]):
            print(help_text(program, doc, groups))
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            fail(program, f"{err} (--help lists the flags)")
    return parse


def quant_config_from_flags(values):
    from tfqat.config import QuantConfig

    return QuantConfig(
        weight_bits=values.weight_bits, activation_bits=values.activation_bits,
        per_channel=values.per_channel, ema_decay=values.ema_decay,
        quant_delay=values.quant_delay, bn_freeze_delay=values.bn_freeze_delay,
        bn_fold=values.bn_fold, exclude=tuple(values.exclude))
