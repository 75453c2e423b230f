"""KerasOpLayer: one Keras op (keras.ops.transpose, `x[:, 1:]`, ...) called as a layer."""

from __future__ import annotations

import inspect

import keras
import numpy as np

from tfqat.nn.quantizers import fake_quant_weights


@keras.saving.register_keras_serializable(package="tfqat")
class KerasOpLayer(keras.layers.Layer):
    """Calls Keras operation `op` (with `arguments` bound as keyword arguments) as a layer.

    The QAT model holds Keras ops this way for their name scope: a bare op's TF ops carry
    the TF function's name ("concat", "concat_1") instead of the op's, so nothing in the
    .tflite says which op wrote a tensor, and op_fidelity cannot tell apart two same-sized
    tensors at one scale (the members of a concatenation group). The layer runs the same
    op with the same arguments; the non-tensor call arguments (a slice key, a constant
    matmul operand) stay in the graph node, as for the op. With `constant_bits`, array
    operands (constants) are fake-quantized as weights, symmetric per tensor.

    Example:
      >>> from tfqat.rewrite.graph import numpy_op
      >>> layer = KerasOpLayer(numpy_op("Transpose", axes=(0, 2, 1)), name="swap")
      >>> layer(keras.ops.zeros((1, 2, 3))).shape
      TensorShape([1, 3, 2])
      >>> KerasOpLayer(numpy_op("Minimum"), arguments={"x2": 1.0})(keras.ops.ones((2,)) * 3)
      <tf.Tensor: shape=(2,), dtype=float32, numpy=array([1., 1.], dtype=float32)>
    """

    def __init__(self, op, arguments=None, constant_bits=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(op, dict):
            op = keras.saving.deserialize_keras_object(op)
        self.op = op
        self.arguments = dict(arguments or {})
        self.constant_bits = constant_bits
        self._constants = (frozenset(), frozenset())  # positions, names of array operands

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
        leaves = keras.tree.flatten((args, kwargs))
        if any(isinstance(value, keras.KerasTensor) for value in leaves):
            # Building the graph: array operands (a matmul's constant matrix) are constants.
            # Keras turns them into tensors before `call`, so note where they are. (Evaluated
            # on arrays later, every operand is an array: only the symbolic call tells.)
            self._constants = (
                frozenset(i for i, value in enumerate(args) if isinstance(value, np.ndarray)),
                frozenset(k for k, value in kwargs.items() if isinstance(value, np.ndarray)))
        return super().__call__(*args, **kwargs)

    def call(self, *args, **kwargs):
        if self.constant_bits is not None:
            # A constant operand is an int8 weight tensor of the TFLite op (FULLY_CONNECTED's
            # or BATCH_MATMUL's): symmetric per tensor, as the converter stores it.
            positions, names = self._constants
            args = [self._quantized(a) if i in positions else a for i, a in enumerate(args)]
            kwargs = {k: self._quantized(v) if k in names else v for k, v in kwargs.items()}
        return self.op(*args, **self.arguments, **kwargs)

    def _quantized(self, constant):
        return fake_quant_weights(keras.ops.cast(constant, "float32"), self.constant_bits,
                                  per_channel=False)

    def compute_output_spec(self, *args, **kwargs):
        return self.op.compute_output_spec(*args, **self.arguments, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(op=keras.saving.serialize_keras_object(self.op), arguments=self.arguments,
                      constant_bits=self.constant_bits)
        return config


def _is_tensor(value) -> bool:
    return isinstance(value, (keras.KerasTensor, np.ndarray)) or keras.ops.is_tensor(value)
