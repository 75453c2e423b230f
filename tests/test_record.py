"""The quantization record: what quantize_model did, saved with the model, and the one
place (tfqat/rewrite/graph.py) that touches Keras internals."""

import pathlib
import re

import keras
import pytest

import tfqat

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _model():
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    a = keras.layers.MaxPooling2D(name="mp")(x)
    b = keras.layers.AveragePooling2D(2, name="ap")(x)
    x = keras.layers.Concatenate(name="cat")([a, b])
    x = keras.layers.Conv2D(4, 1, activation="swish", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, activation="softmax", name="d")(x)
    return keras.Model(inp, out)


def test_record_lists_every_decision():
    qat = tfqat.quantize_model(_model(), tfqat.QuantConfig(exclude=("gap",)))
    record = tfqat.record_of(qat)
    by_layer = {d.float_layers: d for d in record.decisions}
    fused = by_layer[("c1", "bn1", "r1")]
    assert fused.rule == "linear_bn_relu" and fused.qat_layers == ("c1",)
    assert fused.scale_policy == "own" and fused.output_quantizer == "c1_fq"
    assert by_layer[("mp",)].scale_policy == "shared"
    assert by_layer[("ap",)].scale_policy == "tied" and by_layer[("ap",)].output_quantizer == "c1_fq"
    assert record.quantizer("c1_fq").tied_calls == 1
    assert record.quantizer("c1_fq").float_tensor == "r1"
    assert record.quantizer("c2_fq").float_tensor is None  # before the split-off swish
    assert record.quantizer("d_activation_fq").fixed
    assert record.float_layers == ("gap",)
    with pytest.raises(tfqat.ExportError, match="gap"):
        tfqat.export_tflite(qat)


def test_record_survives_save_and_load(tmp_path):
    qat = tfqat.quantize_model(_model())
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert isinstance(loaded, tfqat.QATModel)
    assert tfqat.record_of(loaded) == tfqat.record_of(qat)


def test_a_user_rule_is_exported_not_refused_as_float():
    """The rewrite's own record decides what is quantized, so a user rule's layers export."""
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 0.5

    keras.saving.register_keras_serializable(package="test_record")(Scale)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(Scale(name="half")(inp)))
    registry = tfqat.QuantRegistry().register_int8_layer(Scale)
    qat = tfqat.quantize_model(model, registry=registry)
    qat(keras.random.uniform((8, 4)), training=True)
    assert tfqat.inspect_tflite(tfqat.export_tflite(qat)).integer_only


def test_record_of_a_float_model_says_what_to_do():
    with pytest.raises(ValueError, match="quantize_model"):
        tfqat.record_of(_model())


PRIVATE_KERAS = re.compile(r"\._(keras_history|inbound_nodes|outbound_nodes|nodes_by_depth|"
                           r"flatten_layers|functional|outputs_struct|output_shape|tracker)\b|"
                           r"keras\.src\b")


def test_only_the_graph_adapter_touches_keras_internals():
    offenders = []
    for path in sorted((ROOT / "tfqat").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() == "tfqat/rewrite/graph.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_KERAS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "Keras internals outside tfqat/rewrite/graph.py:\n" + "\n".join(offenders)
