"""Per-layer settings: 4-bit weights in the body, 8 bits at both ends, one layer left float.

QuantConfig.overrides gives layers their own settings, and exclude keeps
layers in float. 4-bit weights are a simulation (what would 4-bit hardware
lose?); export_tflite needs <= 8 bits, so the exported model here is the
8-bit variant of the same network.

  python examples/custom_model.py
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfqat  # noqa: E402
from tfqat.training import data  # noqa: E402
from tfqat.diagnostics import evaluation  # noqa: E402


def build_model(input_shape, num_classes):
    # momentum=0.9: with ~1,400 training digits there are few steps for the moving statistics.
    bn = dict(momentum=0.9)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="first_conv")(inputs)
    x = keras.layers.BatchNormalization(name="first_bn", **bn)(x)
    x = keras.layers.ReLU(name="first_relu")(x)
    for index in (1, 2):
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{index}")(x)
        x = keras.layers.BatchNormalization(name=f"dw{index}_bn", **bn)(x)
        x = keras.layers.ReLU(6.0, name=f"dw{index}_relu")(x)
        x = keras.layers.Conv2D(32, 1, use_bias=False, name=f"pw{index}")(x)
        x = keras.layers.BatchNormalization(name=f"pw{index}_bn", **bn)(x)
        x = keras.layers.ReLU(6.0, name=f"pw{index}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="custom")


def body_4bit_config(bn_freeze_delay):
    """4-bit weights everywhere except the first and last layers, which keep 8."""
    return tfqat.QuantConfig(weight_bits=4, bn_freeze_delay=bn_freeze_delay,
                             overrides={"first_conv": {"weight_bits": 8},
                                        "classifier": {"weight_bits": 8}})


def train(model, dataset, epochs, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(dataset.x_train, dataset.y_train, batch_size=32, epochs=epochs, verbose=0)
    return model.evaluate(dataset.x_test, dataset.y_test, verbose=0)[1]


def main(argv=None, float_epochs=10, qat_epochs=2):
    keras.utils.set_random_seed(0)
    dataset = data.load_dataset("digits")
    model = build_model(dataset.input_shape, dataset.num_classes)
    results = {"float": train(model, dataset, float_epochs, 3e-3)}

    qat_4bit = tfqat.quantize_model(model, body_4bit_config(bn_freeze_delay=40))
    print("weight bits:", {l.name: l.weight_bits for l in qat_4bit.layers
                           if isinstance(l, tfqat.FusedQuantLayer)})
    results["qat, 4-bit body"] = train(qat_4bit, dataset, qat_epochs, 1e-4)

    # Excluding a layer keeps it float; export then refuses and names it.
    partly_float = tfqat.quantize_model(model, tfqat.QuantConfig(exclude=("classifier",)))
    tfqat.calibrate(partly_float, dataset.x_train[:256])
    try:
        tfqat.export_tflite(partly_float)
    except tfqat.ExportError as err:
        print("export refused, as expected:", str(err).split(".")[0])

    qat_8bit = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=40))
    results["qat, 8-bit"] = train(qat_8bit, dataset, qat_epochs, 1e-4)
    flatbuffer = tfqat.export_tflite(qat_8bit)
    report = tfqat.inspect_tflite(flatbuffer)
    lite = evaluation.run_tflite(flatbuffer, dataset.x_test)
    results["int8 tflite"] = float(np.mean(lite.dequantized.argmax(-1) == dataset.y_test))
    for name, accuracy in results.items():
        print(f"{name:<16} accuracy {accuracy:.4f}")
    print(f"integer-only: {report.integer_only}")
    return results, report


if __name__ == "__main__":
    main()
