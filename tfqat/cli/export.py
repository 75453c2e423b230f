"""`tfqat-export`: turns a saved QAT model into an integer-only .tflite.

Usage:
  tfqat-export --model=qat.keras --output=model_int8.tflite [--eval_dataset=mnist5k] [--report]

Bad input gets one line on stderr, exit code 2, and no output file.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tfqat.cli import flags as cli  # noqa: E402

PROGRAM = "tfqat-export"

flags.DEFINE_string("model", None, "A QAT model saved by tfqat (.keras).")
flags.DEFINE_string("output", None, "Where to write the .tflite.")
flags.DEFINE_string("eval_dataset", None, "Optional dataset (same syntax as tfqat-train "
                    "--dataset) to report int8 accuracy and agreement with the QAT model.")
flags.DEFINE_string("data_dir", None, "Data folder for tfds datasets.")
flags.DEFINE_boolean("report", False, "Print the inspect_tflite table of the result.")
cli.define_verbose_flag()

GROUPS = (
    ("Input and output", ("model", "output")),
    ("Checks", ("eval_dataset", "data_dir", "report")),
    ("Logging", ("verbose",)),
)

FLAGS = flags.FLAGS


def _check_paths(model_path, output_path):
    if not model_path:
        cli.fail(PROGRAM, "--model is required: the QAT model (.keras) to export.")
    if not output_path:
        cli.fail(PROGRAM, "--output is required: where to write the .tflite.")
    if not os.path.isfile(model_path):
        cli.fail(PROGRAM, f"--model: no such file '{model_path}'.")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        cli.fail(PROGRAM, f"--output: folder '{folder}' does not exist.")
    if not os.access(folder, os.W_OK) or os.path.isdir(output_path):
        cli.fail(PROGRAM, f"--output: cannot write '{output_path}'.")


def _load(model_path):
    from tfqat.training.pipeline import load_model_file

    try:
        return load_model_file(model_path)
    except (ValueError, FileNotFoundError) as err:
        cli.fail(PROGRAM, str(err))


def main(argv):
    cli.quiet_logging()
    cli.apply_verbose(FLAGS.verbose)
    if len(argv) > 1:
        cli.fail(PROGRAM, f"unexpected arguments {argv[1:]}; use --model and --output.")
    _check_paths(FLAGS.model, FLAGS.output)
    model = _load(FLAGS.model)
    dataset = _eval_dataset(model) if FLAGS.eval_dataset else None  # before writing anything
    from tfqat.export.tflite import ExportError, export_tflite

    try:
        export_tflite(model, FLAGS.output)
    except ExportError as err:
        message = str(err)
        if "float model" in message:
            message += f" With the command line: tfqat-train --model={FLAGS.model} --float_epochs=0"
        cli.fail(PROGRAM, message)
    except OSError as err:
        cli.fail(PROGRAM, f"--output: cannot write '{FLAGS.output}' ({err.strerror or err}).")
    size = os.path.getsize(FLAGS.output)
    print(f"Wrote {FLAGS.output} ({size:,} bytes, integer-only, int8 input and output).")
    if FLAGS.report:
        from tfqat.export.reader import inspect_tflite

        print(inspect_tflite(FLAGS.output))
    if dataset is not None:
        _evaluate(model, dataset)


def _eval_dataset(model):
    from tfqat.training import data as data_lib

    try:
        dataset = data_lib.load_dataset(FLAGS.eval_dataset, data_dir=FLAGS.data_dir)
        return data_lib.fit_to_input(dataset, tuple(model.inputs[0].shape[1:]))
    except (ValueError, FileNotFoundError, ImportError) as err:
        cli.fail(PROGRAM, f"--eval_dataset: {err}")


def _evaluate(model, dataset):
    import sys

    from tfqat.diagnostics.evaluation import compare_to_model

    result = compare_to_model(model, FLAGS.output, dataset.x_test, dataset.y_test,
                              progress=sys.stdout.isatty())
    print(f"int8 accuracy {result.tflite_accuracy:.4f} (QAT {result.model_accuracy:.4f}), "
          f"top-1 agreement {result.agreement:.4f}, max output difference "
          f"{result.max_diff_lsb:.1f} LSB on {result.num_examples} {dataset.name} test examples")


def run():
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROGRAM, __doc__, GROUPS))


if __name__ == "__main__":
    run()
