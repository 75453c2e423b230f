"""Float training -> quantize_model -> QAT fine-tune -> export_tflite on real MNIST digits.

Each case trains a zoo model on mnist5k (4,000 digits), fine-tunes it with fake
quantization and checks the integer-only .tflite against the float model and
the QAT model with the LiteRT interpreter. About half a minute per model on 2 CPU cores.
"""

import keras
import numpy as np
import pytest

import tfqat
from tfqat.training import data, models

from tfqat.diagnostics import evaluation

pytestmark = pytest.mark.slow

BATCH_SIZE = 32
# name: (float epochs, float peak learning rate, minimum float test accuracy)
RECIPES = {"lenet5": (8, 2e-3, 0.95), "small_resnet": (10, 5e-3, 0.93)}
QAT_EPOCHS = 2
QAT_LEARNING_RATE = 1e-4


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist5k(seed=0)


def compile_with_cosine_decay(model, learning_rate, epochs, steps_per_epoch):
    # Decaying to zero leaves weights and BN moving statistics settled, so the
    # float and QAT accuracies compare models that have stopped moving.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_float_qat_int8_tflite(name, mnist, tmp_path, record_property):
    epochs, learning_rate, min_float_accuracy = RECIPES[name]
    keras.utils.set_random_seed(0)
    steps_per_epoch = -(-len(mnist.x_train) // BATCH_SIZE)

    model = models.build_model(name, mnist.input_shape, mnist.num_classes)
    compile_with_cosine_decay(model, learning_rate, epochs, steps_per_epoch)
    model.fit(mnist.x_train, mnist.y_train, epochs=epochs, batch_size=BATCH_SIZE, verbose=0)
    float_accuracy = model.evaluate(mnist.x_test, mnist.y_test, verbose=0)[1]
    assert float_accuracy >= min_float_accuracy

    # BN freezes halfway, so the second half trains the exported arithmetic exactly.
    config = tfqat.QuantConfig(bn_freeze_delay=QAT_EPOCHS * steps_per_epoch // 2)
    qat = tfqat.quantize_model(model, config)
    compile_with_cosine_decay(qat, QAT_LEARNING_RATE, QAT_EPOCHS, steps_per_epoch)
    qat.fit(mnist.x_train, mnist.y_train, epochs=QAT_EPOCHS, batch_size=BATCH_SIZE, verbose=0)
    assert all(layer.bn_frozen() for layer in qat.layers
               if isinstance(layer, tfqat.FusedQuantLayer) and layer.batchnorm is not None)

    path = tmp_path / f"{name}_int8.tflite"
    flatbuffer = tfqat.export_tflite(qat, path)
    assert path.read_bytes() == flatbuffer
    report = tfqat.inspect_tflite(flatbuffer)
    assert report.integer_only, str(report)
    assert [t.dtype for t in report.inputs + report.outputs] == ["int8", "int8"]

    result = evaluation.compare_to_model(qat, flatbuffer, mnist.x_test, mnist.y_test)
    figures = {"float_accuracy": round(float_accuracy, 4),
               "qat_accuracy": round(result.model_accuracy, 4),
               "tflite_accuracy": round(result.tflite_accuracy, 4),
               "agreement": round(result.agreement, 4),
               "max_diff_lsb": result.max_diff_lsb,
               "mean_diff_lsb": round(result.mean_diff_lsb, 4)}
    print(f"\n{name}: {figures}")
    for key, value in figures.items():
        record_property(key, value)
    assert abs(result.tflite_accuracy - float_accuracy) <= 0.01 + 1e-9
    assert result.agreement >= 0.99
