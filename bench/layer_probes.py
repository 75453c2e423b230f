"""One small probe model per Keras layer class, buildable with Keras 3 and with tf_keras.

Used by bench/layer_coverage.py (tfqat, Keras 3) and bench/tfmot_worker.py's "layers" task
(TFMOT, tf_keras), so both tools are asked about the same models. `build(keras, name)` makes
`input -> layer -> [Flatten] -> Dense(2)` (two inputs for merges); it raises
NotInThisKeras when the class does not exist in that Keras.
"""

from __future__ import annotations

# name -> (constructor kwargs, input shape, input kind). Input kinds: "float" (uniform in
# [-1, 1]), "image" (uniform in [0, 255]), "tokens" (int32 ids in [0, 16)), "pair" (two float
# inputs, a merge), "strings". Classes missing here are built with no arguments on "float"
# (8, 8, 3).
PROBES = {
    "Activation": ({"activation": "relu"}, (8, 8, 3), "float"),
    "ActivityRegularization": ({"l1": 0.01}, (8, 8, 3), "float"),
    "AdaptiveAveragePooling1D": ({"output_size": 2}, (8, 3), "float"),
    "AdaptiveAveragePooling2D": ({"output_size": 2}, (8, 8, 3), "float"),
    "AdaptiveAveragePooling3D": ({"output_size": 2}, (4, 4, 4, 3), "float"),
    "AdaptiveMaxPooling1D": ({"output_size": 2}, (8, 3), "float"),
    "AdaptiveMaxPooling2D": ({"output_size": 2}, (8, 8, 3), "float"),
    "AdaptiveMaxPooling3D": ({"output_size": 2}, (4, 4, 4, 3), "float"),
    "Add": ({}, (8, 8, 3), "pair"),
    "AdditiveAttention": ({}, (6, 4), "pair"),
    "AlphaDropout": ({"rate": 0.1}, (8, 8, 3), "float"),
    "Attention": ({}, (6, 4), "pair"),
    "Average": ({}, (8, 8, 3), "pair"),
    "AveragePooling1D": ({"pool_size": 2}, (8, 3), "float"),
    "AveragePooling2D": ({"pool_size": 2}, (8, 8, 3), "float"),
    "AveragePooling3D": ({"pool_size": 2}, (4, 4, 4, 3), "float"),
    "BatchNormalization": ({}, (8, 8, 3), "float"),
    "CategoryEncoding": ({"num_tokens": 16, "output_mode": "one_hot"}, (), "tokens"),
    "CenterCrop": ({"height": 4, "width": 4}, (8, 8, 3), "image"),
    "Concatenate": ({}, (8, 8, 3), "pair"),
    "Conv1D": ({"filters": 4, "kernel_size": 3}, (8, 3), "float"),
    "Conv1DTranspose": ({"filters": 4, "kernel_size": 3}, (8, 3), "float"),
    "Conv2D": ({"filters": 4, "kernel_size": 3}, (8, 8, 3), "float"),
    "Conv2DTranspose": ({"filters": 4, "kernel_size": 3}, (8, 8, 3), "float"),
    "Conv3D": ({"filters": 4, "kernel_size": 3}, (4, 4, 4, 3), "float"),
    "Conv3DTranspose": ({"filters": 4, "kernel_size": 3}, (4, 4, 4, 3), "float"),
    "ConvLSTM1D": ({"filters": 4, "kernel_size": 3}, (4, 8, 3), "float"),
    "ConvLSTM2D": ({"filters": 4, "kernel_size": 3}, (4, 8, 8, 3), "float"),
    "ConvLSTM3D": ({"filters": 4, "kernel_size": 3}, (2, 4, 4, 4, 3), "float"),
    "Cropping1D": ({"cropping": 1}, (8, 3), "float"),
    "Cropping2D": ({"cropping": 1}, (8, 8, 3), "float"),
    "Cropping3D": ({"cropping": 1}, (4, 4, 4, 3), "float"),
    "Dense": ({"units": 4}, (8,), "float"),
    "DepthwiseConv1D": ({"kernel_size": 3}, (8, 3), "float"),
    "DepthwiseConv2D": ({"kernel_size": 3}, (8, 8, 3), "float"),
    "Discretization": ({"bin_boundaries": [-0.5, 0.0, 0.5]}, (8,), "float"),
    "Dot": ({"axes": 1}, (8,), "pair"),
    "Dropout": ({"rate": 0.1}, (8, 8, 3), "float"),
    "ELU": ({}, (8, 8, 3), "float"),
    "EinsumDense": ({"equation": "ab,bc->ac", "output_shape": 4, "bias_axes": "c"}, (8,),
                    "float"),
    "Embedding": ({"input_dim": 16, "output_dim": 4}, (6,), "tokens"),
    "Flatten": ({}, (8, 8, 3), "float"),
    "GRU": ({"units": 4}, (6, 3), "float"),
    "GaussianDropout": ({"rate": 0.1}, (8, 8, 3), "float"),
    "GaussianNoise": ({"stddev": 0.1}, (8, 8, 3), "float"),
    "GlobalAveragePooling1D": ({}, (8, 3), "float"),
    "GlobalAveragePooling2D": ({}, (8, 8, 3), "float"),
    "GlobalAveragePooling3D": ({}, (4, 4, 4, 3), "float"),
    "GlobalMaxPooling1D": ({}, (8, 3), "float"),
    "GlobalMaxPooling2D": ({}, (8, 8, 3), "float"),
    "GlobalMaxPooling3D": ({}, (4, 4, 4, 3), "float"),
    "GroupNormalization": ({"groups": 3}, (8, 8, 3), "float"),
    "GroupQueryAttention": ({"head_dim": 2, "num_query_heads": 2, "num_key_value_heads": 1},
                            (6, 4), "pair"),
    "Identity": ({}, (8, 8, 3), "float"),
    "LSTM": ({"units": 4}, (6, 3), "float"),
    "LayerNormalization": ({}, (6, 4), "float"),
    "LeakyReLU": ({}, (8, 8, 3), "float"),
    "Masking": ({}, (6, 3), "float"),
    "MaxPooling1D": ({"pool_size": 2}, (8, 3), "float"),
    "MaxPooling2D": ({"pool_size": 2}, (8, 8, 3), "float"),
    "MaxPooling3D": ({"pool_size": 2}, (4, 4, 4, 3), "float"),
    "Maximum": ({}, (8, 8, 3), "pair"),
    "Minimum": ({}, (8, 8, 3), "pair"),
    "MultiHeadAttention": ({"num_heads": 2, "key_dim": 2}, (6, 4), "pair"),
    "Multiply": ({}, (8, 8, 3), "pair"),
    "Normalization": ({"mean": [0.1, 0.2, 0.3], "variance": [1.0, 2.0, 0.5]}, (8, 8, 3),
                      "float"),
    "PReLU": ({}, (8, 8, 3), "float"),
    "Permute": ({"dims": (2, 1, 3)}, (8, 8, 3), "float"),
    "RMSNormalization": ({}, (6, 4), "float"),
    "ReLU": ({}, (8, 8, 3), "float"),
    "RepeatVector": ({"n": 3}, (8,), "float"),
    "Rescaling": ({"scale": 1.0 / 255}, (8, 8, 3), "image"),
    "Reshape": ({"target_shape": (64, 3)}, (8, 8, 3), "float"),
    "Resizing": ({"height": 4, "width": 4}, (8, 8, 3), "image"),
    "SeparableConv1D": ({"filters": 4, "kernel_size": 3}, (8, 3), "float"),
    "SeparableConv2D": ({"filters": 4, "kernel_size": 3}, (8, 8, 3), "float"),
    "SimpleRNN": ({"units": 4}, (6, 3), "float"),
    "Softmax": ({}, (8, 8, 3), "float"),
    "SpatialDropout1D": ({"rate": 0.1}, (8, 3), "float"),
    "SpatialDropout2D": ({"rate": 0.1}, (8, 8, 3), "float"),
    "SpatialDropout3D": ({"rate": 0.1}, (4, 4, 4, 3), "float"),
    "Subtract": ({}, (8, 8, 3), "pair"),
    "UnitNormalization": ({}, (6, 4), "float"),
    "UpSampling1D": ({"size": 2}, (4, 3), "float"),
    "UpSampling2D": ({"size": 2}, (4, 4, 3), "float"),
    "UpSampling3D": ({"size": 2}, (2, 2, 2, 3), "float"),
    "ZeroPadding1D": ({"padding": 1}, (8, 3), "float"),
    "ZeroPadding2D": ({"padding": 1}, (8, 8, 3), "float"),
    "ZeroPadding3D": ({"padding": 1}, (4, 4, 4, 3), "float"),
    # Image augmentation: active in training only.
    "RandomBrightness": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomColorDegeneration": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomHue": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomPosterization": ({"factor": 4}, (8, 8, 3), "image"),
    "RandomSaturation": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomSharpness": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomContrast": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomCrop": ({"height": 6, "width": 6}, (8, 8, 3), "image"),
    "RandomFlip": ({}, (8, 8, 3), "image"),
    "RandomRotation": ({"factor": 0.1}, (8, 8, 3), "image"),
    "RandomTranslation": ({"height_factor": 0.1, "width_factor": 0.1}, (8, 8, 3), "image"),
    "RandomZoom": ({"height_factor": 0.1}, (8, 8, 3), "image"),
}

# Wrappers: built around a Dense (TimeDistributed, Bidirectional around an LSTM).
WRAPPERS = {
    "TimeDistributed": ((6, 3), "float"),
    "Bidirectional": ((6, 3), "float"),
}

# Classes that no probe model can exercise here, with the reason (listed in the table as such).
NOT_PROBED = {
    "InputLayer": "the model input itself",
    "Layer": "the base class",
    "Wrapper": "an abstract base class",
    "Lambda": "arbitrary Python: tfqat refuses it, pointing at keras.ops",
    "RNN": "built from a cell; see LSTM, GRU, SimpleRNN",
    "GRUCell": "a cell: used inside RNN/GRU",
    "LSTMCell": "a cell: used inside RNN/LSTM",
    "SimpleRNNCell": "a cell: used inside RNN/SimpleRNN",
    "StackedRNNCells": "a cell: used inside RNN",
    "FlaxLayer": "wraps JAX code (JAX backend only)",
    "JaxLayer": "wraps JAX code (JAX backend only)",
    "TorchModuleWrapper": "wraps PyTorch code (torch backend only)",
    "TFSMLayer": "loads a SavedModel from disk",
    "Pipeline": "a preprocessing pipeline run outside the model",
    "SpectralNormalization": "a weight-normalizing wrapper of another layer",
    "StringLookup": "string inputs: preprocessing outside an int8 model",
    "IntegerLookup": "needs an adapted vocabulary: preprocessing outside an int8 model",
    "TextVectorization": "string inputs: preprocessing outside an int8 model",
    "HashedCrossing": "string/categorical feature crossing: preprocessing",
    "MelSpectrogram": "audio preprocessing (FFT): no int8 TFLite kernel",
    "STFTSpectrogram": "audio preprocessing (FFT): no int8 TFLite kernel",
    "ReversibleEmbedding": "keras_hub-style tied embedding (two call modes)",
    "Hashing": "categorical preprocessing (integer hashing) before a model's int8 part",
    "MaxNumBoundingBoxes": "bounding-box preprocessing",
}


class NotInThisKeras(LookupError):
    """The layer class does not exist in the Keras that was passed."""


def layer_classes(keras) -> dict:
    """{class name: class} for every public layer class of `keras.layers`, aliases merged
    into the first name in alphabetical order."""
    import inspect

    seen = {}
    known = {*PROBES, *WRAPPERS, *NOT_PROBED}
    # Of several names for one class, the one the tables use (else the first alphabetically).
    for name in sorted(dir(keras.layers), key=lambda n: (n not in known, n)):
        cls = getattr(keras.layers, name)
        if inspect.isclass(cls) and issubclass(cls, keras.layers.Layer) and cls not in seen.values():
            seen[name] = cls
    return dict(sorted(seen.items()))


def aliases(keras) -> dict:
    """{class name: [other names of the same class]}."""
    import inspect

    out = {}
    for name, cls in layer_classes(keras).items():
        out[name] = sorted(other for other in dir(keras.layers)
                           if other != name and inspect.isclass(getattr(keras.layers, other))
                           and getattr(keras.layers, other) is cls)
    return out


def inputs_for(kind, shape, count, seed=0):
    """Fixed-seed probe inputs: an array, or a list of two for "pair"."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return rng.integers(0, 16, size=(count, *shape)).astype("int32")
    if kind == "image":
        return rng.uniform(0, 255, size=(count, *shape)).astype("float32")
    x = rng.uniform(-1, 1, size=(count, *shape)).astype("float32")
    if kind == "pair":
        return [x, rng.uniform(-1, 1, size=(count, *shape)).astype("float32")]
    return x


def build(keras, name):
    """The probe model of layer class `name`: (model, input kind, input shape)."""
    if not hasattr(keras.layers, name):
        raise NotInThisKeras(name)
    cls = getattr(keras.layers, name)
    if name in WRAPPERS:
        shape, kind = WRAPPERS[name]
        inner = keras.layers.Dense(4) if name == "TimeDistributed" else keras.layers.LSTM(2)
        layer = cls(inner, name="probe")
    else:
        kwargs, shape, kind = PROBES.get(name, ({}, (8, 8, 3), "float"))
        layer = cls(name="probe", **kwargs)
    dtype = "int32" if kind == "tokens" else "float32"
    if kind == "pair":
        a, b = keras.Input(shape, name="a"), keras.Input(shape, name="b")
        inputs = [a, b]
        if name in ("MultiHeadAttention", "GroupQueryAttention"):
            x = layer(a, b)
        else:
            x = layer([a, b])
    else:
        inputs = keras.Input(shape, dtype=dtype, name="x")
        x = layer(inputs)
    if isinstance(x, (list, tuple)):
        x = x[0]
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten")(x)
    if str(getattr(x, "dtype", "float32")) not in ("float32", "<dtype: 'float32'>"):
        x = keras.layers.Activation("linear", dtype="float32")(keras.ops.cast(x, "float32")
                                                               if hasattr(keras, "ops") else x)
    out = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, out, name=f"probe_{name}"), kind, shape
