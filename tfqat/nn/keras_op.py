"""KerasOpLayer: one Keras op (keras.ops.transpose, `x[:, 1:]`, ...) called as a layer."""

from __future__ import annotations

import inspect

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="tfqat")
class KerasOpLayer(keras.layers.Layer):
    """Calls Keras operation `op` (with `arguments` bound as keyword arguments) as a layer.

    The QAT model holds Keras ops this way for their name scope: a bare op's TF ops carry
    the TF function's name ("concat", "concat_1") instead of the op's, so nothing in the
    .tflite says which op wrote a tensor, and op_fidelity cannot tell apart two same-sized
    tensors at one scale (the members of a concatenation group). The layer runs the same
    op with the same arguments; the non-tensor call arguments (a slice key, a constant
    matmul operand) stay in the graph node, as for the op.

    Example:
      >>> from tfqat.rewrite.graph import numpy_op
      >>> layer = KerasOpLayer(numpy_op("Transpose", axes=(0, 2, 1)), name="swap")
      >>> layer(keras.ops.zeros((1, 2, 3))).shape
      TensorShape([1, 3, 2])
      >>> KerasOpLayer(numpy_op("Minimum"), arguments={"x2": 1.0})(keras.ops.ones((2,)) * 3)
      <tf.Tensor: shape=(2,), dtype=float32, numpy=array([1., 1.], dtype=float32)>
    """

    def __init__(self, op, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(op, dict):
            op = keras.saving.deserialize_keras_object(op)
        self.op = op
        self.arguments = dict(arguments or {})

    def __call__(self, *args, **kwargs):
        # Keras layers take only tensors positionally: the op's other arguments (a slice key)
        # go by their names in the op's call signature.
        names = [p.name for p in inspect.signature(self.op.call).parameters.values()
                 if p.kind is p.POSITIONAL_OR_KEYWORD]
        tensors = 1
        while tensors < len(args) and _is_tensor(args[tensors]):
            tensors += 1
        if tensors < len(args):
            kwargs.update(zip(names[tensors:], args[tensors:]))
            args = args[:tensors]
        return super().__call__(*args, **kwargs)

    def call(self, *args, **kwargs):
        return self.op(*args, **self.arguments, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.op.compute_output_spec(*args, **self.arguments, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(op=keras.saving.serialize_keras_object(self.op), arguments=self.arguments)
        return config


def _is_tensor(value) -> bool:
    return isinstance(value, (keras.KerasTensor, np.ndarray)) or keras.ops.is_tensor(value)
