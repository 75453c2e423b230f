"""int8 accuracy of three ways to an integer-only model, from one trained float model:

1. the TFLite converter's own post-training quantization (representative_dataset);
2. tfqat post-training quantization: quantize_model + calibrate + export_tflite;
3. tfqat QAT: quantize_model + fine-tune + export_tflite.

  python bench/ptq_vs_qat.py [--model lenet5] [--dataset mnist5k] [--seeds 0 1 2]

Prints a markdown table and writes bench/results/ptq_vs_qat.json.
"""

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfqat  # noqa: E402
from tfqat.training import data, models  # noqa: E402
from tfqat.diagnostics import evaluation  # noqa: E402
from tfqat.files import atomic_write_bytes  # noqa: E402

BATCH = 32


def compile_cosine(model, learning_rate, epochs, num_examples):
    steps = epochs * -(-num_examples // BATCH)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])


def accuracy_of(tflite, dataset):
    out = evaluation.run_tflite(tflite, dataset.x_test)
    return float(np.mean(out.dequantized.argmax(-1) == dataset.y_test))


def compare(model_name="lenet5", dataset_name="mnist5k", seed=0, float_epochs=8, qat_epochs=2,
            calibration_method="percentile"):
    """Returns the float accuracy and the int8 accuracy of the three paths."""
    keras.utils.set_random_seed(seed)
    dataset = data.load_dataset(dataset_name, seed=seed)
    model = models.build_model(model_name, dataset.input_shape, dataset.num_classes)
    compile_cosine(model, 2e-3, float_epochs, len(dataset.y_train))
    model.fit(dataset.x_train, dataset.y_train, batch_size=BATCH, epochs=float_epochs, verbose=0)
    result = {"float": float(model.evaluate(dataset.x_test, dataset.y_test, verbose=0)[1])}

    result["converter PTQ"] = accuracy_of(evaluation.converter_ptq(model, dataset.x_train), dataset)

    ptq = tfqat.quantize_model(model)
    tfqat.calibrate(ptq, dataset.x_train[:1024], method=calibration_method)
    result[f"tfqat PTQ ({calibration_method})"] = accuracy_of(tfqat.export_tflite(ptq), dataset)

    steps = qat_epochs * -(-len(dataset.y_train) // BATCH)
    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=steps // 2))
    compile_cosine(qat, 1e-4, qat_epochs, len(dataset.y_train))
    qat.fit(dataset.x_train, dataset.y_train, batch_size=BATCH, epochs=qat_epochs, verbose=0)
    result["tfqat QAT"] = accuracy_of(tfqat.export_tflite(qat), dataset)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=str(pathlib.Path(__file__).parent / "results" / "ptq_vs_qat.json"))
    args = parser.parse_args(argv)
    runs = [compare(args.model, args.dataset, seed) for seed in args.seeds]
    rows = {name: [run[name] for run in runs] for name in runs[0]}
    print(f"| {args.model} on {args.dataset}, seeds {args.seeds} | int8 accuracy, mean ± std |")
    print("| --- | --- |")
    for name, values in rows.items():
        print(f"| {name} | {100 * np.mean(values):.2f} ± {100 * np.std(values):.2f} % |")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    atomic_write_bytes(args.output, json.dumps(
        {"model": args.model, "dataset": args.dataset, "seeds": args.seeds, "accuracy": rows},
        indent=2).encode())


if __name__ == "__main__":
    main()
