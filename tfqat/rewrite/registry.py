"""The public extension API: teaching `quantize_model` a layer it does not know.

A `QuantRegistry` is passed to `quantize_model(model, registry=...)`; nothing
global changes, and its rules are tried before the built-in ones. Three ways
to register a layer class, from the least to the most work:

- `register_int8_layer(cls, scale=...)`: the layer runs as int8 ops as it is
  (one TFLite op such as MUL by a constant). tfqat copies it and puts a fake
  quant on its output: a tracked range ("own"), the input's scale rounded
  again ("input": ops that round to their input's scale), no fake quant at
  all ("shared": ops that keep the input's int8 values, like a reshape), or a
  fixed range `(lo, hi)`.
- `register_spec(cls, QuantizeSpec(...))`: like TFMOT's QuantizeConfig, in
  Keras 3: which weights are fake-quantized (bits, per channel on an axis),
  which inner tensors are int8 (the inputs of the layer's callable attributes,
  such as the pre-activation of `activation`), and the output's scale.
- `register_rule(RewriteRule(...))`: a pattern (a chain of layer predicates)
  plus a builder that returns the QAT layers, for fused blocks.

Example:
  >>> registry = tfqat.QuantRegistry()
  >>> registry.register_int8_layer(ChannelScale)
  >>> registry.register_spec(MyDense, tfqat.QuantizeSpec(
  ...     weights={"kernel": tfqat.WeightQuant(per_channel=False)}, activation_inputs=("activation",)))
  >>> qat = tfqat.quantize_model(model, registry=registry)
"""

from __future__ import annotations

import dataclasses
import inspect

import keras
import tensorflow as tf

from tfqat.nn.quantizers import (ActivationQuantizer, add_step_counter, fake_quant_weights,
                                 pass_through_during_delay)
from tfqat.rewrite import rules as rules_lib
from tfqat.rewrite.rules.base import (INPUT_SCALE, SCALE_PRESERVING, TRACKED, OutputQuant,
                                      Replacement, RewriteRule, Step, _clone_chain, clone_layer)

# The output scale a registered layer declares -> what the rewrite does after it.
_SCALES = {"own": TRACKED, "input": INPUT_SCALE, "shared": SCALE_PRESERVING}


def _output_quant(scale, cls) -> OutputQuant:
    if isinstance(scale, (tuple, list)) and len(scale) == 2:
        lo, hi = (float(v) for v in scale)
        if not lo <= 0.0 <= hi or lo == hi:
            raise ValueError(f"{cls.__name__}: a fixed range must contain 0 and not be empty; "
                             f"got {scale}.")
        return OutputQuant("fixed", (lo, hi))
    if scale not in _SCALES:
        raise ValueError(f"{cls.__name__}: scale={scale!r}; use 'own', 'input', 'shared' or a "
                         "fixed range (lo, hi).")
    return _SCALES[scale]


def _is_layer_class(cls):
    return isinstance(cls, type) and issubclass(cls, keras.layers.Layer)


@dataclasses.dataclass(frozen=True)
class WeightQuant:
    """How one weight of a registered layer is fake-quantized (symmetric, narrow range).

    bits / per_channel: None takes the layer's QuantConfig value. axis: the
    channel axis of a per-channel weight.
    """

    bits: int | None = None
    per_channel: bool | None = None
    axis: int = -1


@dataclasses.dataclass(frozen=True)
class QuantizeSpec:
    """What of a registered layer is int8 in the exported model.

    weights: {attribute name: WeightQuant} for the weights to fake-quantize
      (attributes set in `build`, e.g. `self.kernel = self.add_weight(...)`).
    activation_inputs: names of callable attributes (like `activation`) whose
      input is an int8 tensor (TFLite cannot fuse them); a tracked fake quant goes there.
    output: the output's scale: "own", "input", "shared" or a fixed (lo, hi).

    Example:
      >>> spec = QuantizeSpec(weights={"kernel": WeightQuant(per_channel=False)})
    """

    weights: dict = dataclasses.field(default_factory=dict)
    activation_inputs: tuple = ()
    output: object = "own"

    def to_config(self) -> dict:
        return {"weights": {k: dataclasses.asdict(v) for k, v in self.weights.items()},
                "activation_inputs": list(self.activation_inputs),
                "output": list(self.output) if isinstance(self.output, tuple) else self.output}

    @classmethod
    def from_config(cls, config: dict) -> "QuantizeSpec":
        output = config["output"]
        return cls({k: WeightQuant(**v) for k, v in config["weights"].items()},
                   tuple(config["activation_inputs"]),
                   tuple(output) if isinstance(output, list) else output)


@keras.saving.register_keras_serializable(package="tfqat")
class QuantWrapper(keras.layers.Layer):
    """A copy of a user layer run with the fake quants its QuantizeSpec declares.

    During `call` the declared weight attributes of the wrapped layer are
    replaced by their fake-quantized values and the declared callables get a
    fake quant on their input; both are restored afterwards.
    """

    def __init__(self, layer, spec, weight_bits=8, per_channel=True, activation_bits=8,
                 ema_decay=0.999, quant_delay=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        self.layer = layer
        self.spec = QuantizeSpec.from_config(spec) if isinstance(spec, dict) else spec
        self.weight_bits, self.per_channel = int(weight_bits), bool(per_channel)
        self.activation_bits, self.ema_decay = int(activation_bits), float(ema_decay)
        self.quant_delay = int(quant_delay)
        self.inner_quantizers = [
            ActivationQuantizer(bits=activation_bits, ema_decay=ema_decay, quant_delay=quant_delay,
                                name=f"{self.name}_{attr}_fq")
            for attr in self.spec.activation_inputs]

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        for attr in self.spec.weights:
            if not isinstance(getattr(self.layer, attr, None), keras.Variable):
                raise ValueError(
                    f"QuantizeSpec of '{self.layer.name}' ({type(self.layer).__name__}) names "
                    f"weight '{attr}', but the layer has no variable attribute '{attr}'. Name "
                    "the attributes that hold its weights (set in build with add_weight).")
        for attr in self.spec.activation_inputs:
            if not callable(getattr(self.layer, attr, None)):
                raise ValueError(
                    f"QuantizeSpec of '{self.layer.name}' names activation input '{attr}', "
                    f"but the layer has no callable attribute '{attr}'.")
        for quantizer in self.inner_quantizers:
            quantizer.build(None)  # per-tensor state only: no shape needed
        self.step = add_step_counter(self)

    def _quantized_weight(self, attr, variable, training):
        quant = self.spec.weights[attr]
        bits = quant.bits or self.weight_bits
        per_channel = self.per_channel if quant.per_channel is None else quant.per_channel
        value = tf.convert_to_tensor(variable)
        axis = quant.axis % value.shape.rank if value.shape.rank else 0
        last = value.shape.rank - 1
        if per_channel and axis != last:
            perm = [i for i in range(value.shape.rank) if i != axis] + [axis]
            inverse = [perm.index(i) for i in range(len(perm))]
            quantize = lambda: tf.transpose(
                fake_quant_weights(tf.transpose(value, perm), bits, True), inverse)
        else:
            quantize = lambda: fake_quant_weights(value, bits, per_channel and value.shape.rank > 0)
        if not training:
            return quantize()
        return pass_through_during_delay(self.step, self.quant_delay, value, quantize)

    def call(self, inputs, training=None):
        layer = self.layer
        saved = {attr: getattr(layer, attr) for attr in [*self.spec.weights,
                                                         *self.spec.activation_inputs]}
        try:
            for attr in self.spec.weights:
                # object.__setattr__: a tensor in place of the variable for this call only,
                # without Keras tracking it as a new weight.
                object.__setattr__(layer, attr, self._quantized_weight(attr, saved[attr], training))
            for attr, quantizer in zip(self.spec.activation_inputs, self.inner_quantizers):
                function = saved[attr]
                object.__setattr__(layer, attr, lambda x, f=function, q=quantizer:
                                   f(q(x, training=training)))
            outputs = layer.call(inputs, training=training) if _takes_training(layer) else \
                layer.call(inputs)
        finally:
            for attr, value in saved.items():
                object.__setattr__(layer, attr, value)
        if training:
            self.step.assign_add(1)
        return outputs

    def compute_output_spec(self, inputs, training=None):
        return self.layer.compute_output_spec(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer),
                      spec=self.spec.to_config(), weight_bits=self.weight_bits,
                      per_channel=self.per_channel, activation_bits=self.activation_bits,
                      ema_decay=self.ema_decay, quant_delay=self.quant_delay)
        return config


def _takes_training(layer) -> bool:
    return "training" in inspect.signature(layer.call).parameters


class QuantRegistry:
    """User rules for `quantize_model`, tried before the built-in ones; see the module doc.

    Example:
      >>> registry = QuantRegistry().register_int8_layer(ChannelScale)
      >>> qat = tfqat.quantize_model(model, registry=registry)
    """

    def __init__(self):
        self._rules = []

    @property
    def rules(self) -> tuple:
        """The registered rules followed by the built-in table."""
        return (*self._rules, *rules_lib.RULES)

    def register_rule(self, rule: RewriteRule) -> "QuantRegistry":
        """Adds a full replacement: a pattern plus a builder (see tfqat.rewrite.rules.base)."""
        if not isinstance(rule, RewriteRule):
            raise TypeError(f"register_rule takes a tfqat.RewriteRule, got {type(rule).__name__}.")
        if any(existing.name == rule.name for existing in self._rules):
            raise ValueError(f"A rule named '{rule.name}' is already registered.")
        self._rules.append(rule)
        return self

    def register_int8_layer(self, cls, scale="own", fuses_relu=False) -> "QuantRegistry":
        """Declares that layers of class `cls` run as int8 ops as they are.

        fuses_relu: the layer's last TFLite op takes a fused activation (MUL, ADD, SUB,
          CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), so the converter runs a ReLU/ReLU6
          read only by it inside that op, rounding once after the ReLU; the QAT model then
          does the same (scale "own" only). Without it such a pair is 1-2 LSB off at the
          ReLU (op_fidelity shows it); with it, a last op that cannot fuse stays float and
          export_tflite refuses the model naming it.

        Example:
          >>> registry = tfqat.QuantRegistry().register_int8_layer(ChannelScale, fuses_relu=True)
        """
        self._check_class(cls)
        output = _output_quant(scale, cls)
        pattern = (Step("layer", lambda layer: type(layer) is cls),)
        if fuses_relu:
            if output != TRACKED:
                raise ValueError(f"register_int8_layer({cls.__name__}): fuses_relu=True needs "
                                 f"scale='own' (the ReLU's output takes the tracked range), "
                                 f"got scale={scale!r}.")
            pattern += (rules_lib.activations.RELU_TAIL,)
        return self.register_rule(RewriteRule(
            f"int8_layer:{cls.__name__}", pattern,
            lambda match, cfg: _clone_chain(match, output), keeps_layers=True))

    def register_spec(self, cls, spec: QuantizeSpec) -> "QuantRegistry":
        """Declares which weights and inner tensors of class `cls` are int8 (QuantizeSpec)."""
        self._check_class(cls)
        if not isinstance(spec, QuantizeSpec):
            raise TypeError(f"register_spec takes a tfqat.QuantizeSpec, got {type(spec).__name__}.")
        output = _output_quant(spec.output, cls)

        def build(match, cfg):
            original = match["layer"]
            wrapper = QuantWrapper(
                clone_layer(original), spec, weight_bits=cfg.weight_bits,
                per_channel=cfg.per_channel, activation_bits=cfg.activation_bits,
                ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay, name=original.name)
            return Replacement([wrapper], output,
                               lambda: wrapper.layer.set_weights(original.get_weights()))

        return self.register_rule(RewriteRule(
            f"spec:{cls.__name__}", (Step("layer", lambda layer: type(layer) is cls),), build))

    def _check_class(self, cls):
        if not _is_layer_class(cls):
            raise TypeError(f"Register a keras.layers.Layer subclass, got {cls!r}.")
