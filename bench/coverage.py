"""Architecture coverage: every Keras Applications CNN family through tfqat.

For each model (weights=None, the smallest input the architecture takes,
classes=10): `quantize_model`, a few training steps on fixed-seed random data,
a short calibration pass, `export_tflite`, and the fidelity of the .tflite
against the QAT model on fixed-seed inputs: top-1 agreement and the mean and
max output difference in output LSBs.

    python bench/coverage.py                     # all models -> docs/coverage.md
    python bench/coverage.py --models ResNet50V2 --output /tmp/one.md
    python bench/coverage.py --update --models VGG16   # re-measure one row, keep the others

tests/test_coverage.py runs `measure` for every model and checks its row in
docs/coverage.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tfqat  # noqa: E402
from tfqat.diagnostics.evaluation import compare_to_model  # noqa: E402
from tfqat.diagnostics.fidelity import op_fidelity  # noqa: E402

DOC = ROOT / "docs" / "coverage.md"
NUM_CLASSES = 10
# Two training steps of 8 images. Smaller batches make the BatchNormalization statistics of
# the 1x1 late feature maps (32x32 inputs) degenerate: float ResNet50 itself blows its BN gammas
# up to ~1e3 in two SGD steps of 2 images.
TRAIN_IMAGES, TRAIN_BATCH = 16, 8
LEARNING_RATE = 1e-4
CALIBRATION_IMAGES = 8
EVAL_IMAGES = 16
OP_BY_OP_IMAGES = 4


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A Keras Applications model at its smallest input.

    input_range: the (low, high) of the fixed-seed uniform inputs; (0, 255) for
    models that rescale inside (MobileNetV3, EfficientNet, ConvNeXt), else (-1, 1), the
    range their preprocess_input gives.
    """

    name: str
    build: Callable[[], keras.Model]
    input_shape: tuple
    input_range: tuple = (-1.0, 1.0)
    slow: bool = False
    # A deeper or wider member of a family already in the table (same layer kinds, same
    # rules): measured for the table, left out of the slow tests to keep CI's time down.
    variant_of: str | None = None


def _app(name, input_shape, **kwargs):
    constructor = getattr(keras.applications, name)
    return lambda: constructor(input_shape=input_shape, weights=None, classes=NUM_CLASSES, **kwargs)


def _spec(name, input_shape, input_range=(-1.0, 1.0), slow=False, variant_of=None, **kwargs):
    return ModelSpec(name, _app(name, input_shape, **kwargs), input_shape, input_range, slow,
                     variant_of)


# Minimum input sizes: 32x32 where the architecture allows it; InceptionV3 and
# InceptionResNetV2 need 75x75, Xception 71x71 (Keras refuses smaller inputs).
SPECS = (
    _spec("MobileNet", (32, 32, 3), alpha=0.25),
    _spec("MobileNetV2", (32, 32, 3), alpha=0.35),
    _spec("MobileNetV3Small", (32, 32, 3), (0.0, 255.0), alpha=0.75),
    _spec("MobileNetV3Large", (32, 32, 3), (0.0, 255.0), alpha=0.75),
    _spec("ResNet50", (32, 32, 3), slow=True),
    _spec("ResNet101", (32, 32, 3), slow=True, variant_of="ResNet50"),
    _spec("ResNet152", (32, 32, 3), slow=True, variant_of="ResNet50"),
    _spec("ResNet50V2", (32, 32, 3), slow=True),
    _spec("ResNet101V2", (32, 32, 3), slow=True, variant_of="ResNet50V2"),
    _spec("EfficientNetB0", (32, 32, 3), (0.0, 255.0), slow=True),
    _spec("EfficientNetV2B0", (32, 32, 3), (0.0, 255.0), slow=True),
    _spec("DenseNet121", (32, 32, 3), slow=True),
    _spec("DenseNet169", (32, 32, 3), slow=True, variant_of="DenseNet121"),
    _spec("DenseNet201", (32, 32, 3), slow=True, variant_of="DenseNet121"),
    _spec("NASNetMobile", (32, 32, 3), slow=True),
    _spec("InceptionV3", (75, 75, 3), slow=True),
    _spec("InceptionResNetV2", (75, 75, 3), slow=True),
    _spec("Xception", (71, 71, 3), slow=True),
    _spec("VGG16", (32, 32, 3), slow=True),
    _spec("VGG19", (32, 32, 3), slow=True, variant_of="VGG16"),
    # ConvNeXt normalizes 0..255 inputs itself (include_preprocessing).
    _spec("ConvNeXtTiny", (32, 32, 3), (0.0, 255.0), slow=True),
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


@dataclasses.dataclass
class CoverageRow:
    """One model's line in docs/coverage.md."""

    model: str
    input_shape: tuple
    params: int
    fused_conv_bn: int
    activation_fake_quants: int
    weight_fake_quants: int
    integer_only: bool
    int8_io: bool
    tflite_bytes: int
    agreement: float
    mean_diff_lsb: float
    max_diff_lsb: float
    op_max_diff_lsb: float
    ops_compared: int
    ops_total: int
    train_loss: float
    quantize_s: float
    train_s: float
    export_s: float


def images(spec: ModelSpec, count: int, seed: int) -> np.ndarray:
    """Fixed-seed uniform inputs in the model's input range."""
    low, high = spec.input_range
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (count, *spec.input_shape)).astype("float32")


def settle_batchnorm(model, x) -> None:
    """Sets every BatchNormalization's moving statistics to its statistics on `x`.

    A model built with weights=None has moving statistics (0, 1) that do not
    match its activations, so in inference mode a deep net's activations grow
    or vanish layer after layer. One training-mode pass with momentum 0 gives
    each BN the statistics of its input on `x` (as a trained model has on its
    data), so the fidelity figures measure quantization, not a broken float net.
    Only BN state changes.
    """
    batchnorms = [l for l in model._flatten_layers(include_self=False, recursive=True)
                  if isinstance(l, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in batchnorms]
    for bn in batchnorms:
        bn.momentum = 0.0
    trainable = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            trainable[layer.name] = layer.rate
            layer.rate = 0.0
    try:
        model(x, training=True)
    finally:
        for bn, momentum in zip(batchnorms, saved):
            bn.momentum = momentum
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if layer.name in trainable:
                layer.rate = trainable[layer.name]


def count_layers(qat) -> dict:
    """Fused conv-BN layers, activation fake quants and weight fake quants of a QAT model."""
    fused = [l for l in qat.layers if isinstance(l, tfqat.FusedQuantLayer)]
    return dict(
        fused_conv_bn=sum(l.batchnorm is not None and not isinstance(l, tfqat.QuantBatchNormalization)
                          for l in fused),
        activation_fake_quants=sum(isinstance(l, tfqat.ActivationQuantizer) for l in qat.layers),
        weight_fake_quants=len(fused))


def measure(spec: ModelSpec | str):
    """Runs one model through tfqat; returns (CoverageRow, qat_model, flatbuffer).

    Example:
      >>> row, qat, flatbuffer = measure("MobileNet")
      >>> row.integer_only, row.agreement
      (True, 1.0)
    """
    spec = SPECS_BY_NAME[spec] if isinstance(spec, str) else spec
    keras.utils.set_random_seed(0)
    model = spec.build()
    settle_batchnorm(model, images(spec, CALIBRATION_IMAGES, seed=1))

    start = time.perf_counter()
    qat = tfqat.quantize_model(model)
    quantize_s = time.perf_counter() - start

    start = time.perf_counter()
    x_train = images(spec, TRAIN_IMAGES, seed=2)
    y_train = np.random.default_rng(2).integers(0, NUM_CLASSES, TRAIN_IMAGES)
    # Eager steps: tracing the training graph of a large model costs more than two steps.
    qat.compile(keras.optimizers.SGD(LEARNING_RATE), "sparse_categorical_crossentropy",
                run_eagerly=True)
    history = qat.fit(x_train, y_train, batch_size=TRAIN_BATCH, epochs=1, verbose=0)
    train_s = time.perf_counter() - start

    tfqat.calibrate(qat, images(spec, CALIBRATION_IMAGES, seed=1), method="minmax")
    start = time.perf_counter()
    flatbuffer = tfqat.export_tflite(qat)
    export_s = time.perf_counter() - start

    report = tfqat.inspect_tflite(flatbuffer)
    x_eval = images(spec, EVAL_IMAGES, seed=3)
    comparison = compare_to_model(qat, flatbuffer, x_eval)
    op_by_op = op_fidelity(qat, flatbuffer, x_eval[:OP_BY_OP_IMAGES])
    row = CoverageRow(
        model=spec.name, input_shape=spec.input_shape, params=model.count_params(),
        **count_layers(qat), integer_only=report.integer_only,
        int8_io=all(t.dtype == "int8" for t in report.inputs + report.outputs),
        tflite_bytes=report.size_bytes, agreement=comparison.agreement,
        mean_diff_lsb=comparison.mean_diff_lsb, max_diff_lsb=comparison.max_diff_lsb,
        op_max_diff_lsb=op_by_op.max_diff_lsb, ops_compared=op_by_op.num_checked,
        ops_total=op_by_op.num_checked + len(op_by_op.unmatched),
        train_loss=float(history.history["loss"][-1]), quantize_s=quantize_s, train_s=train_s, export_s=export_s)
    return row, qat, flatbuffer


COLUMNS = ("model", "input", "params", "fused conv-BN", "fake quants (act / weight)",
           "integer-only", ".tflite KiB", "top-1 agreement", "mean diff (LSB)", "max diff (LSB)",
           "op-by-op max diff (LSB)", "quantize s", "train s", "export s")


def _cells(row) -> list:
    """The table cells of a CoverageRow, or of a row parsed back by parse_table (a dict)."""
    if isinstance(row, dict):
        return [row[column] for column in COLUMNS]
    return [
        row.model, "x".join(map(str, row.input_shape)), f"{row.params:,}", str(row.fused_conv_bn),
        f"{row.activation_fake_quants} / {row.weight_fake_quants}",
        "yes" if row.integer_only and row.int8_io else "NO", f"{row.tflite_bytes / 1024:,.0f}",
        f"{row.agreement:.0%}", f"{row.mean_diff_lsb:.2f}", f"{row.max_diff_lsb:.0f}",
        f"{row.op_max_diff_lsb:.0f} ({row.ops_compared} of {row.ops_total})",
        f"{row.quantize_s:.1f}", f"{row.train_s:.1f}", f"{row.export_s:.1f}"]


def render(rows, command="python bench/coverage.py") -> str:
    """docs/coverage.md: a header, one table row per model, and how the figures were made.

    rows: CoverageRows, or rows parsed from a table (parse_table's dicts), in table order.

    Example:
      >>> row, _, _ = measure("MobileNet")
      >>> print(render([row]))
    """
    steps = TRAIN_IMAGES // TRAIN_BATCH
    lines = [
        "# Architecture coverage",
        "",
        f"Generated by `{command}`; `tests/test_coverage.py` checks every row.",
        "",
        "Every model is `keras.applications.<model>(weights=None, classes=10)` at its smallest "
        "input (InceptionV3 and InceptionResNetV2 need 75x75, Xception 71x71). Its BatchNorm "
        "statistics are first "
        f"set from {CALIBRATION_IMAGES} fixed-seed images (`settle_batchnorm`: a random "
        "model's (0, 1) statistics make deep nets' activations explode). Then "
        f"`tfqat.quantize_model`, {steps} training steps (batch {TRAIN_BATCH}, SGD "
        f"{LEARNING_RATE:g}) on fixed-seed random data, `tfqat.calibrate` (minmax) on the "
        f"{CALIBRATION_IMAGES} images, `tfqat.export_tflite`, and the .tflite against the QAT "
        f"model on {EVAL_IMAGES} other fixed-seed images.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    lines += [
        "",
        "- fused conv-BN: conv/dense layers with a BatchNormalization folded into their "
        "weights. fake quants: activation quantizers / quantized weight tensors.",
        "- integer-only: every op of the .tflite has int8/int32 tensors, int8 input and output.",
        "- top-1 agreement, mean and max diff: the .tflite against the QAT model, end to end; "
        "differences in output LSBs (the softmax output's scale is 1/256).",
        "- op-by-op max diff: `tfqat.op_fidelity` on "
        f"{OP_BY_OP_IMAGES} images: each quantized tensor of the QAT model computed from the "
        ".tflite's own int8 inputs, against the .tflite's tensor, in that tensor's LSBs; "
        "(n of m): tensors found in the .tflite by name (the converter renames a few, e.g. "
        "after fusing two identical ReLUs, and Keras ops such as `x * (1 / 6)` carry no layer "
        "name).",
        "- quantize, train, export: seconds on the machine that made the table (2 CPU cores) "
        "for `quantize_model`, compile + fit (eager), `export_tflite` (conversion and checks).",
        "",
        "Why the end-to-end figures are far from exact while every op is within 1 LSB: with "
        "random weights and BatchNorm, these nets magnify small differences layer after layer "
        "(BatchNorm at initialization makes deep nets chaotic). The .tflite and the QAT model "
        "differ by one LSB in well under 1% of the values of a tensor (float and fixed-point "
        "rounding ties), and 50 to 200 layers later that is tens of output LSBs. A trained "
        "network is far less sensitive: on the trained MNIST models of "
        "tests/test_end_to_end.py the .tflite agrees with the QAT model on at least 99% of the "
        "test digits.",
        "",
    ]
    return "\n".join(lines)


def parse_table(text: str) -> dict:
    """{model: {column: cell text}} from a rendered coverage.md."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS) and cells[0] in SPECS_BY_NAME:
            rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


def merge_rows(table: dict, rows) -> list:
    """The rows of `table` (parse_table's dicts) with `rows` (CoverageRows) put in: a measured
    row replaces the table's row of its model, the others are kept; in the order of SPECS.

    Example:
      >>> row, _, _ = measure("VGG16")
      >>> merged = merge_rows(parse_table(DOC.read_text()), [row])
      >>> DOC.write_text(render(merged))
    """
    by_model = {**table, **{row.model: row for row in rows}}
    return [by_model[spec.name] for spec in SPECS if spec.name in by_model]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[s.name for s in SPECS],
                        choices=[s.name for s in SPECS], metavar="MODEL")
    parser.add_argument("--output", type=pathlib.Path, default=DOC)
    parser.add_argument("--update", action="store_true",
                        help="measure only --models and merge their rows into the existing "
                             "table at --output (the other rows are kept, in SPECS order)")
    args = parser.parse_args(argv)
    if args.update and not args.output.exists():
        parser.error(f"--update: {args.output} does not exist")
    table = parse_table(args.output.read_text()) if args.update else {}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        row, _, _ = measure(name)
        print(" | ".join(_cells(row)), flush=True)
        rows.append(row)
        # Written after each model, so a long run keeps the rows it has measured.
        args.output.write_text(render(merge_rows(table, rows)))
        print(f"wrote {args.output}", flush=True)
    return 0 if all(r.integer_only and r.int8_io for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
