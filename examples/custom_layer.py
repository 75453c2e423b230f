"""Teaching tfqat your own layers, three ways, end to end on real digits.

- ChannelScale (x * w, a learned per-channel scale): one int8 MUL as it is, so
  it is declared with `register_int8_layer`.
- ScaledDense (x @ kernel + bias, then an activation): a QuantizeSpec says
  that its kernel is fake-quantized per tensor and that the input of its
  `activation` (GELU here, its own int8 op: TFLite cannot fuse it) is an int8 tensor.
- ConvBNBlock (a layer holding a Conv2D and a BatchNormalization): a rewrite
  rule whose builder returns one tfqat.QuantConv2D that folds the BN.

Each is registered serializable, so the QAT model saves and loads. The model
is trained in float, quantized with the registry, fine-tuned, exported
integer-only and checked op by op against the .tflite.

Run: python examples/custom_layer.py [--steps 300]
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfqat  # noqa: E402
from tfqat.training import data  # noqa: E402


@keras.saving.register_keras_serializable(package="custom_layer_example")
class ChannelScale(keras.layers.Layer):
    """y = x * w, one learned scale per channel."""

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.w


@keras.saving.register_keras_serializable(package="custom_layer_example")
class ScaledDense(keras.layers.Layer):
    """y = activation(x @ kernel + bias)."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return self.activation(keras.ops.matmul(inputs, self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation)}


@keras.saving.register_keras_serializable(package="custom_layer_example")
class ConvBNBlock(keras.layers.Layer):
    """relu(BatchNormalization(Conv2D(x))), as one layer."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn = keras.layers.BatchNormalization()

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return keras.ops.relu(self.bn(self.conv(inputs), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def build_conv_bn_block(match, cfg):
    """The QAT replacement of a ConvBNBlock: one conv with its BN folded and ReLU fused."""
    block = match["block"]
    fused = tfqat.QuantConv2D(
        block.filters, 3, padding="same", use_bias=False, activation="relu",
        batchnorm={"epsilon": block.bn.epsilon, "momentum": block.bn.momentum,
                   "center": block.bn.center, "scale": block.bn.scale},
        weight_bits=cfg.weight_bits, per_channel=cfg.per_channel, quant_delay=cfg.quant_delay,
        bn_freeze_delay=cfg.bn_freeze_delay, name=block.name)
    return tfqat.Replacement([fused], tfqat.OutputQuant("tracked"),
                             lambda: fused.load_float_weights(block.conv, block.bn))


def make_registry():
    """The registry that teaches quantize_model the three layers above.

    Example:
      >>> qat = tfqat.quantize_model(model, registry=make_registry())
    """
    registry = tfqat.QuantRegistry()
    registry.register_int8_layer(ChannelScale)                                   # (a)
    registry.register_spec(ScaledDense, tfqat.QuantizeSpec(                       # (b)
        weights={"kernel": tfqat.WeightQuant(per_channel=False)},
        activation_inputs=("activation",), output="own"))
    registry.register_rule(tfqat.RewriteRule(                                      # (c)
        "conv_bn_block", (tfqat.Step("block", lambda layer: type(layer) is ConvBNBlock),),
        build_conv_bn_block))
    return registry


def build_model(num_classes=10):
    inp = keras.Input((8, 8, 1), name="image")
    x = ConvBNBlock(8, name="block1")(inp)
    x = ChannelScale(name="scale1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = ScaledDense(32, activation="gelu", name="hidden")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="custom_layers")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="float training steps")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    digits = data.load_digits()
    x_train, y_train, x_test, y_test = digits.x_train, digits.y_train, digits.x_test, digits.y_test
    model = build_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    epochs = max(1, args.steps * 32 // len(x_train))
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=40),
                               registry=make_registry())
    print(tfqat.record_of(qat))
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
    qat.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    qat_accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]

    with tempfile.TemporaryDirectory() as folder:
        qat.save(os.path.join(folder, "qat.keras"))
        reloaded = keras.models.load_model(os.path.join(folder, "qat.keras"))
    flatbuffer = tfqat.export_tflite(reloaded)
    fidelity = tfqat.op_fidelity(reloaded, flatbuffer, x_test[:64])
    print(f"float accuracy {float_accuracy:.3f}, QAT accuracy {qat_accuracy:.3f}")
    print(fidelity)
    if fidelity.max_diff_lsb > 1.0 + 1e-3 or fidelity.unmatched:  # float rounding ties
        print("op fidelity above 1 LSB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
