"""`tfqat-inspect model.tflite`: prints a .tflite's ops, tensors and quantization.

Prints the table of `tfqat.inspect_tflite` (every op with its input and output
tensors, dtypes, scales and zero points) and a last line saying whether the
model is integer-only. Exit status: 0 on success, 2 for a file that cannot be
read as a .tflite (missing, not a TFLite model, truncated), and with
`--check` 1 when the model is not integer-only.

Example:
  $ tfqat-inspect model_int8.tflite
  $ python -m tfqat.cli.inspect --check model_int8.tflite && echo integer-only
"""

from __future__ import annotations

import argparse
import os
import sys

from tfqat.export.reader import inspect_tflite

PROG = "tfqat-inspect"
# Bytes 4..7 of every TFLite flatbuffer.
TFLITE_IDENTIFIER = b"TFL3"


class InputFileError(Exception):
    """The file is not a readable .tflite; the message is one line for the user."""


def read_report(path):
    """inspect_tflite(path), with every way a file can be unusable as one clear error.

    Example:
      >>> print(read_report("model_int8.tflite"))
    """
    if not os.path.exists(path):
        raise InputFileError(f"'{path}' does not exist.")
    if os.path.isdir(path):
        raise InputFileError(f"'{path}' is a directory; pass a .tflite file.")
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as err:
        raise InputFileError(f"cannot read '{path}': {err.strerror or err}.") from err
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise InputFileError(
            f"'{path}' is not a TFLite model (no '{TFLITE_IDENTIFIER.decode()}' identifier in "
            "its header); pass a .tflite flatbuffer, e.g. one written by tfqat.export_tflite.")
    try:
        return inspect_tflite(content)
    except (ValueError, RuntimeError) as err:
        # The interpreter's flatbuffer verifier rejects a cut or damaged file.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputFileError(
            f"'{path}' has a TFLite header but cannot be loaded; it is truncated or corrupt "
            f"({len(content):,} bytes; {reason}). Export or copy it again.") from err


def summary_line(report) -> str:
    """One line: integer-only or not, and why not.

    Example:
      >>> summary_line(inspect_tflite("model_int8.tflite"))
      'integer-only: yes (12 ops, all int8/int32 kernels; input/output int8)'
    """
    io_dtypes = sorted({t.dtype for t in report.inputs + report.outputs})
    if report.integer_only:
        return (f"integer-only: yes ({len(report.ops)} ops, all int8/int32 kernels; "
                f"input/output {', '.join(io_dtypes)})")
    reasons = []
    if report.float_ops:
        kinds = sorted({op.name for op in report.float_ops})
        reasons.append(f"{len(report.float_ops)} non-integer ops ({', '.join(kinds)})")
    if any(t.dtype != "int8" for t in report.inputs + report.outputs):
        reasons.append(f"input/output dtypes {', '.join(io_dtypes)}, not int8")
    return "integer-only: NO (" + "; ".join(reasons) + ")"


def main(argv=None) -> int:
    """Entry point of `tfqat-inspect`; returns the exit status.

    Example:
      >>> main(["model_int8.tflite"])
      0
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Show the ops, tensors, dtypes, scales and zero points of a "
        ".tflite model, and whether it is integer-only.")
    parser.add_argument("model", help="path to a .tflite file")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 unless the model is integer-only")
    args = parser.parse_args(argv)
    try:
        report = read_report(args.model)
    except InputFileError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(report)
    print(summary_line(report))
    return 1 if args.check and not report.integer_only else 0


if __name__ == "__main__":
    sys.exit(main())
