"""Quiet by default: TensorFlow's C++ logging, Keras's export listings and the
converter's warnings kept out of the user's terminal unless asked for.

`TFQAT_VERBOSE=1` in the environment (the apps' --verbose sets it) lets
everything through.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

# The converter says this for every QAT model: the ranges are in the fake quants.
CONVERTER_WARNINGS = ("Statistics for quantized inputs were expected",)


def verbose() -> bool:
    """Whether the user asked for TensorFlow's own output (TFQAT_VERBOSE=1)."""
    return os.environ.get("TFQAT_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def quiet_native_output(enabled: bool | None = None):
    """Inside the block, C++ logging on stderr, Python prints on stdout and the
    converter's known warnings are dropped; errors still raise with their message.

    enabled=None: quiet unless TFQAT_VERBOSE is set.

    Example:
      >>> with quiet_native_output():
      ...     flatbuffer = converter.convert()  # no "Saved artifact at ..." listing, no I0000 lines
    """
    if enabled is None:
        enabled = not verbose()
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            for text in CONVERTER_WARNINGS:
                warnings.filterwarnings("ignore", message=text)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


APPS = ("tfqat-train", "tfqat-export", "tfqat-inspect")
APP_MODULES = ("tfqat.cli.train", "tfqat.cli.export", "tfqat.cli.inspect")


def _running_an_app() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if any(os.path.basename(arg) in APPS for arg in argv[:2]):
        return True
    return any(a == "-m" and b in APP_MODULES for a, b in zip(argv, argv[1:]))


def begin_app_import():
    """Called first by tfqat/__init__.py: when the process is one of the apps and
    --verbose is not given, TensorFlow's import-time C++ lines (written before its
    log level applies) go to /dev/null. Returns the function that ends it."""
    if not _running_an_app():
        return lambda: None
    if any(arg in ("--verbose", "--verbose=true", "--verbose=1") for arg in sys.argv[1:]):
        os.environ["TFQAT_VERBOSE"] = "1"
        return lambda: None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet = quiet_native_output(True)
    quiet.__enter__()
    done = []
    previous_hook = sys.excepthook

    def end():
        if not done:
            done.append(True)
            sys.excepthook = previous_hook
            quiet.__exit__(None, None, None)

    def hook(*exc_info):  # an import that fails must still show its traceback
        end()
        previous_hook(*exc_info)

    sys.excepthook = hook
    return end
