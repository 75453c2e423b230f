"""LSTM, GRU and SimpleRNN unrolled into the plain int8 ops TFLite runs per time step.

Why unrolled (measured with TF 2.21; docs/design.md, "Recurrent layers"): the
converter makes a Keras 3 LSTM/GRU/SimpleRNN into a float WHILE loop, and its
full-integer PTQ of them crashes (SIGSEGV). Where the fused
UNIDIRECTIONAL_SEQUENCE_LSTM op exists, its int8 kernel keeps the cell state
and gate intermediates in int16 with scales chosen inside the kernel: not graph
tensors, so a fake quant cannot put them on the .tflite's grid and op_fidelity
cannot check them. Here the time loop is unrolled in `call` over a fixed
sequence length, so every tensor is an ordinary int8 tensor with its own fake
quant:

- the input projection x @ W + b of all steps at once (one CONV_2D 1x1 with
  per-channel weights, or FULLY_CONNECTED per tensor), then UNPACK per step;
- per step, h @ U (CONV_2D 1x1 / FULLY_CONNECTED), ADD, SPLIT into gates,
  LOGISTIC (fixed output range [0, 255/256]) and TANH ([-1, 127/128]), MUL,
  ADD/SUB for the state updates;
- return_sequences: PACK of the per-step hidden states, which share one scale
  (PACK's int8 inputs must have its output's scale).

Step 0 starts from zero states (as Keras does without an initial state), so
its recurrent terms are left out rather than computed from zeros (a zero
state of the batch's size would need SHAPE ops).
keras.layers.Bidirectional around them is QuantBidirectional: two unrolled
directions and their merge (see there).
Each step has its own fake quants (tag `step<t>_<tensor>`, t in processing
order), so each step's tensors get their own scale: the cell state of step 0
is much narrower than that of step 20.

Example:
  >>> lstm = QuantLSTM(8, timesteps=5, return_sequences=True, name="lstm")
  >>> lstm(tf.random.normal([2, 5, 3]), training=True).shape
  TensorShape([2, 5, 8])
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfqat.nn.composite import CompositeQuantLayer
from tfqat.nn.quantizers import (FIXED_RANGES, add_step_counter, fake_quant_weights,
                                 pass_through_during_delay)

SIGMOID_RANGE, TANH_RANGE = FIXED_RANGES["sigmoid"], FIXED_RANGES["tanh"]


class _QuantRecurrent(CompositeQuantLayer):
    """Shared parts: weights, their fake quant, the input projection and the time loop.

    Subclasses set `gates` (blocks of `units` columns in the kernels), add their
    per-step quantizers in `_add_step_quantizers(t, last)` and compute one step
    in `_step(t, projected, state, weights, training)`, returning (h, state).
    """

    gates = 1
    hidden_range = None  # a fixed range of the hidden states, if the op making them has one

    def __init__(self, units, timesteps, return_sequences=False, go_backwards=False,
                 use_bias=True, dropout=0.0, recurrent_dropout=0.0, weight_bits=8,
                 per_channel=True, tag_prefix="", output_quantized=False,
                 align_sequence=False, shared_output=None, **kwargs):
        super().__init__(**kwargs)
        # One direction of a QuantBidirectional: its tags start with `tag_prefix`;
        # `output_quantized` gives the last hidden state a quantizer of its own (the merge reads
        # it); `shared_output` is the merge's quantizer that rounds the output hidden states
        # (Concatenate: one scale for both directions), whose range the merge tracks;
        # `align_sequence` returns a backward sequence in input order, as Bidirectional does.
        self.tag_prefix = str(tag_prefix)
        self.output_quantized = bool(output_quantized)
        self.align_sequence = bool(align_sequence)
        self._shared_output = lambda: shared_output  # owned (saved) by the merge, not here
        self._output_floats = []
        self.units = int(units)
        self.timesteps = int(timesteps)
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        self.use_bias = bool(use_bias)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.weight_bits = int(weight_bits)
        self.per_channel = bool(per_channel)
        if self.timesteps < 1:
            raise ValueError(f"{type(self).__name__} '{self.name}' needs timesteps >= 1.")
        self._add_inner_quantizer("projected")
        for t in range(self.timesteps):
            self._add_step_quantizers(t, last=t == self.timesteps - 1)
        if self.return_sequences and self.shared_output is None:
            self._add_inner_quantizer("sequence", fixed_range=self.hidden_range)

    @property
    def shared_output(self):
        return self._shared_output()

    def _add_inner_quantizer(self, tag, fixed_range=None, **kwargs):
        return super()._add_inner_quantizer(self.tag_prefix + tag, fixed_range, **kwargs)

    def _quantizer(self, tag):
        return getattr(self, f"_{self.tag_prefix}{tag}_fq")

    def _output_quantizer(self):
        return self.shared_output if self.shared_output is not None \
            else self._quantizer("sequence")

    def _step_quantizer(self, t, tensor, fixed_range=None):
        self._add_inner_quantizer(f"step{t}_{tensor}", fixed_range=fixed_range)

    def _hidden_has_inner_quantizer(self, last):
        # With return_sequences the hidden states share the `sequence` quantizer; else the
        # last one is the layer's output, and the rule's quantizer follows it.
        return not (self.return_sequences or (last and not self.output_quantized))

    def build(self, input_shape):
        if input_shape[1] != self.timesteps or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' was made for {self.timesteps} time steps "
                f"and a known feature size; got input shape {tuple(input_shape)}.")
        width = self.gates * self.units
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], width),
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel",
                                                shape=(self.units, width),
                                                initializer="orthogonal")
        self._build_biases(width)
        self.step = add_step_counter(self)
        self._build_inner_quantizers()

    def _build_biases(self, width):
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros") \
            if self.use_bias else None

    # ---- the ops ----------------------------------------------------------
    def _quantized(self, kernel, training):
        """Symmetric int8 weights, per output channel (the last axis) unless per_channel=False.

        Per channel, the kernel [C, K] is viewed as the 1x1 conv filter [1, 1, C, K] before
        the fake quant: the converter cannot reshape a per-axis quantized constant.
        """
        kernel = tf.convert_to_tensor(kernel)
        if self.per_channel:
            kernel = tf.reshape(kernel, [1, 1, *kernel.shape])
        quantize = lambda: fake_quant_weights(kernel, self.weight_bits,
                                              per_channel=self.per_channel)
        if not training:
            return quantize()
        return pass_through_during_delay(self.step.value, self.quant_delay, kernel, quantize)

    def _matmul(self, x, kernel, bias=None):
        """x [N, C] @ kernel (+ bias): one int8 CONV_2D 1x1 with the [1, 1, C, K] kernel of
        `_quantized` (per-channel weights; the converter cannot take a per-axis kernel into
        FULLY_CONNECTED) or FULLY_CONNECTED with a [C, K] kernel."""
        if self.per_channel:
            out = tf.nn.conv2d(tf.reshape(x, [-1, 1, 1, x.shape[-1]]), kernel, 1, "VALID")
        else:
            out = tf.matmul(x, kernel)
        if bias is not None:
            out = out + bias  # before the reshape, so the converter fuses it into the op
        return tf.reshape(out, [-1, kernel.shape[-1]])

    def _input_bias(self):
        return None if self.bias is None else tf.convert_to_tensor(self.bias)

    def _project_inputs(self, inputs, training):
        """x @ W + b for every step at once: [B, T, gates * units]."""
        kernel = self._quantized(self.kernel, training)
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        out = self._matmul(flat, kernel, self._input_bias())
        return tf.reshape(out, [-1, self.timesteps, kernel.shape[-1]])

    @staticmethod
    def _recurrent(h, weights):
        """h, with the recurrent dropout mask during training (one mask for all steps)."""
        mask = weights.get("recurrent_mask")
        return h if mask is None else h * mask

    def call(self, inputs, training=None):
        training = bool(training)
        if training and self.dropout:
            mask_shape = [tf.shape(inputs)[0], 1, inputs.shape[-1]]  # one mask for all steps
            inputs = inputs * keras.random.dropout(tf.ones(mask_shape), self.dropout)
        weights = self._step_weights(training)  # quantized once, used by every step
        if training and self.recurrent_dropout:
            weights["recurrent_mask"] = keras.random.dropout(
                tf.ones([tf.shape(inputs)[0], self.units]), self.recurrent_dropout)
        projected = self._inner(self.tag_prefix + "projected",
                                lambda: self._project_inputs(inputs, training), training)
        # Each step's slice is rounded again to the projection's scale (tied: the same values).
        # Without an explicit fake quant after the UNPACK the converter at times leaves the
        # SPLIT after it in float (RESHAPE, UNPACK, SPLIT: two scale-preserving ops in a row).
        per_step = [self._quantizer("projected")(p, training=training, tied=True)
                    for p in tf.unstack(projected, axis=1)]
        if self.go_backwards:
            per_step = per_step[::-1]
        state, outputs = None, []
        self._sequence_float = []  # a plain list: the float hidden states, for _track_sequence
        for t, step_input in enumerate(per_step):
            h, state = self._step(t, step_input, state, weights, training)
            outputs.append(h)
        if self.shared_output is not None:  # the merge tracks the shared range
            self._output_floats = self._sequence_float
        elif self.return_sequences:
            self._track_sequence(self._sequence_float, training)
        self._sequence_float = []
        if training:
            self.step.assign_add(1)
        # With go_backwards the sequence is in processing order, as Keras returns it (a
        # Bidirectional's backward direction re-orders it to input order: align_sequence).
        if not self.return_sequences:
            return outputs[-1]
        return tf.stack(outputs[::-1] if self.align_sequence else outputs, axis=1)

    def _track_sequence(self, hidden, training):
        """One untied call of the `sequence` quantizer on all steps' float hidden states: it
        tracks the range (and feeds calibration's observer); its value is not used."""
        self._used_tags.add(self.tag_prefix + "sequence")
        self._quantizer("sequence")(tf.stack(hidden, axis=1), training=training)

    def _output_steps(self):
        """The steps whose hidden state the output quantizer rounds."""
        return range(self.timesteps) if self.return_sequences else [self.timesteps - 1]

    def _sequence_key(self, t):
        name = self._output_quantizer().name
        if self.shared_output is None:
            return name if t == 0 else f"{name} (step {t})"
        # Shared by both directions: the forward direction's first tensor is the plain name.
        first = self.tag_prefix == "forward_" and t == self._output_steps()[0]
        return name if first else f"{name} ({self.tag_prefix}step {t})"

    @property
    def inner_tensors(self) -> list:
        """(name scope, name) of each inner int8 tensor; the `sequence` quantizer has one
        tensor per step (its calls' outputs, named after the call)."""
        tensors = []
        for tag, name in super().inner_tensors:
            if tag == self.tag_prefix + "sequence":
                tensors += [(f"{self.tag_prefix}step{t}_sequence", self._sequence_key(t))
                            for t in range(self.timesteps)]
            else:
                tensors.append((tag, name))
        if self.shared_output is not None:
            tensors += [(f"{self.tag_prefix}step{t}_sequence", self._sequence_key(t))
                        for t in self._output_steps()]
        return tensors

    def _step_weights(self, training):
        """The fake-quantized recurrent weights, computed once per call."""
        return {"recurrent": self._quantized(self.recurrent_kernel, training)}

    def _q(self, t, tensor, compute, training):
        return self._inner(f"{self.tag_prefix}step{t}_{tensor}", compute, training)

    def _hidden(self, t, compute, training):
        """The hidden state of step t.

        With return_sequences every step's hidden state has the one scale of the `sequence`
        quantizer: int8 PACK needs one scale for all its inputs, and a hidden state with a
        scale of its own (for the next step) would need a requantize that the converter does
        not make from two fake quants in a row. The range is tracked over all steps after
        the loop (`_track_sequence`), so during training the steps read the last step's range
        (a tied call ahead of the untied one, as for a Concatenate's inputs).
        """
        last = t == self.timesteps - 1
        if self.return_sequences or (last and self.shared_output is not None):
            with tf.name_scope(f"{self.tag_prefix}step{t}_sequence"):
                h = compute()
                self._sequence_float.append(h)
                out = self._output_quantizer()(h, training=training, tied=True, ahead=True)
            return self._replayed(self._sequence_key(t), out)
        if self._hidden_has_inner_quantizer(last):
            return self._q(t, "hidden", compute, training)
        # The layer's output: the rule's quantizer follows.
        with tf.name_scope(f"{self.tag_prefix}step{t}_hidden"):
            return compute()

    def load_float_weights(self, layer):
        """Copies a built Keras RNN's kernel, recurrent kernel and bias (GRU: see there)."""
        cell = layer.cell
        self.kernel.assign(cell.kernel)
        self.recurrent_kernel.assign(cell.recurrent_kernel)
        if self.bias is not None:
            self.bias.assign(cell.bias)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, timesteps=self.timesteps,
                      return_sequences=self.return_sequences, go_backwards=self.go_backwards,
                      use_bias=self.use_bias, dropout=self.dropout,
                      recurrent_dropout=self.recurrent_dropout, weight_bits=self.weight_bits,
                      per_channel=self.per_channel, tag_prefix=self.tag_prefix,
                      output_quantized=self.output_quantized,
                      align_sequence=self.align_sequence)
        return config


@keras.saving.register_keras_serializable(package="tfqat")
class QuantSimpleRNN(_QuantRecurrent):
    """SimpleRNN (tanh) as int8 ops: h_t = tanh(x_t W + b + h_{t-1} U).

    The hidden state is TANH's output, so its scale is TANH's fixed 1/128; the
    rewrite rule gives the layer output that fixed range too.

    Example:
      >>> rnn = QuantSimpleRNN(4, timesteps=3, name="rnn")
      >>> rnn(tf.random.normal([2, 3, 5])).shape
      TensorShape([2, 4])
    """

    gates = 1
    # TANH's: a tracked `sequence` range would need a requantize after each TANH (measured
    # after fit: 1.12 LSB off, a double rounding).
    hidden_range = TANH_RANGE

    def _add_step_quantizers(self, t, last):
        if t > 0:
            self._step_quantizer(t, "recurrent")
            self._step_quantizer(t, "sum")
        if self._hidden_has_inner_quantizer(last):
            self._step_quantizer(t, "hidden", TANH_RANGE)

    def _step(self, t, projected, h, w, training):
        if h is None:
            pre = projected
        else:
            rec = self._q(t, "recurrent",
                          lambda: self._matmul(self._recurrent(h, w), w["recurrent"]), training)
            pre = self._q(t, "sum", lambda: projected + rec, training)
        h = self._hidden(t, lambda: tf.tanh(pre), training)
        return h, h


@keras.saving.register_keras_serializable(package="tfqat")
class QuantLSTM(_QuantRecurrent):
    """LSTM (tanh, sigmoid gates) as int8 ops; gates in Keras's order i, f, c, o.

    Per step: z = x_t W + b + h_{t-1} U (CONV_2D/FULLY_CONNECTED, ADD), SPLIT,
    i, f, o = LOGISTIC, g = TANH, c = f * c_{t-1} + i * g (MUL, MUL, ADD),
    h = o * TANH(c) (MUL).

    Example:
      >>> lstm = QuantLSTM(4, timesteps=3, name="lstm")
      >>> lstm(tf.random.normal([2, 3, 5])).shape
      TensorShape([2, 4])
    """

    gates = 4

    def _add_step_quantizers(self, t, last):
        if t > 0:
            self._step_quantizer(t, "recurrent")
            self._step_quantizer(t, "gates")
        for gate in ("input_gate", "forget_gate", "output_gate"):
            if gate != "forget_gate" or t > 0:
                self._step_quantizer(t, gate, SIGMOID_RANGE)
        self._step_quantizer(t, "candidate", TANH_RANGE)
        if t > 0:
            self._step_quantizer(t, "kept_cell")
        self._step_quantizer(t, "new_cell")
        if t > 0:
            self._step_quantizer(t, "cell")
        self._step_quantizer(t, "cell_tanh", TANH_RANGE)
        if self._hidden_has_inner_quantizer(last):
            self._step_quantizer(t, "hidden")

    def _step(self, t, projected, state, w, training):
        q = lambda tensor, compute: self._q(t, tensor, compute, training)
        if state is None:
            z = projected
        else:
            h, c = state
            rec = q("recurrent", lambda: self._matmul(self._recurrent(h, w), w["recurrent"]))
            z = q("gates", lambda: projected + rec)
        u = self.units
        if state is None:
            # Step 0 has no forget gate (c_{-1} = 0). A SPLIT whose f output is unused is left
            # float by the converter for some trained ranges (issue 11: seeds 0, 2, 3, 5 of
            # the fit test), so each used gate is its own STRIDED_SLICE of z.
            zi, zg, zo = z[:, :u], z[:, 2 * u:3 * u], z[:, 3 * u:]
        else:
            zi, zf, zg, zo = tf.split(z, 4, axis=-1)
        i = q("input_gate", lambda: tf.sigmoid(zi))
        g = q("candidate", lambda: tf.tanh(zg))
        o = q("output_gate", lambda: tf.sigmoid(zo))
        new_cell = q("new_cell", lambda: i * g)
        if state is None:
            cell = new_cell
        else:
            f = q("forget_gate", lambda: tf.sigmoid(zf))
            kept = q("kept_cell", lambda: f * c)
            cell = q("cell", lambda: kept + new_cell)
        cell_tanh = q("cell_tanh", lambda: tf.tanh(cell))
        h = self._hidden(t, lambda: o * cell_tanh, training)
        return h, (h, cell)


@keras.saving.register_keras_serializable(package="tfqat")
class QuantGRU(_QuantRecurrent):
    """GRU (tanh, sigmoid gates) as int8 ops; gates in Keras's order z, r, h.

    reset_after=True (Keras's default): hh = tanh(x W_h + b_h + r * (h U_h + b'_h));
    reset_after=False: hh = tanh(x W_h + b_h + (r * h) U_h). Then
    h = hh + z * (h_{t-1} - hh), which is Keras's z * h_{t-1} + (1 - z) * hh
    with one op fewer (SUB, MUL, ADD). The recurrent biases of z and r are
    added to the input biases (exact in float: both are summed before the
    sigmoid).

    Example:
      >>> gru = QuantGRU(4, timesteps=3, name="gru")
      >>> gru(tf.random.normal([2, 3, 5])).shape
      TensorShape([2, 4])
    """

    gates = 3

    def __init__(self, units, timesteps, reset_after=True, **kwargs):
        self.reset_after = bool(reset_after)
        super().__init__(units, timesteps, **kwargs)

    def _build_biases(self, width):
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros") \
            if self.use_bias else None
        self.recurrent_bias = None
        if self.use_bias and self.reset_after:
            self.recurrent_bias = self.add_weight(name="recurrent_bias", shape=(width,),
                                                  initializer="zeros")

    def _add_step_quantizers(self, t, last):
        if t > 0:
            self._step_quantizer(t, "recurrent")
            self._step_quantizer(t, "gates")
        self._step_quantizer(t, "update_reset", SIGMOID_RANGE)
        if self.reset_after and (t > 0 or self.use_bias):
            self._step_quantizer(t, "reset_recurrent")
            self._step_quantizer(t, "candidate_sum")
        elif not self.reset_after and t > 0:
            self._step_quantizer(t, "reset_hidden")
            self._step_quantizer(t, "candidate_recurrent")
            self._step_quantizer(t, "candidate_sum")
        self._step_quantizer(t, "candidate", TANH_RANGE)
        if t > 0:
            self._step_quantizer(t, "difference")
        self._step_quantizer(t, "update")
        if self._hidden_has_inner_quantizer(last):
            self._step_quantizer(t, "hidden")

    def _input_bias(self):
        if self.bias is None:
            return None
        bias = tf.convert_to_tensor(self.bias)
        if self.recurrent_bias is None:
            return bias
        folded = tf.concat([self.recurrent_bias[:2 * self.units],
                            tf.zeros([self.units])], axis=0)
        return bias + folded

    def _step_weights(self, training):
        u = self.units
        kernel = tf.convert_to_tensor(self.recurrent_kernel)
        if self.reset_after:
            weights = {"recurrent": self._quantized(kernel, training)}
            if self.recurrent_bias is not None:
                candidate_bias = tf.convert_to_tensor(self.recurrent_bias)[2 * u:]
                # A constant operand of step 0's MUL: fake-quantized per tensor, symmetric,
                # so the converter takes this scale for it.
                weights["candidate_bias"] = fake_quant_weights(candidate_bias, self.weight_bits,
                                                               per_channel=False)
                weights["recurrent_bias"] = tf.concat([tf.zeros([2 * u]), candidate_bias], 0)
            return weights
        # Two matmuls: h U_zr and (r * h) U_h; each slice is its own int8 constant.
        return {"recurrent": self._quantized(kernel[:, :2 * u], training),
                "candidate_recurrent": self._quantized(kernel[:, 2 * u:], training)}

    def _step(self, t, projected, h, w, training):
        q = lambda tensor, compute: self._q(t, tensor, compute, training)
        u = self.units
        x_zr, x_h = tf.split(projected, [2 * u, u], axis=-1)
        if h is None:
            zr_pre, r_h = x_zr, w.get("candidate_bias")
        else:
            hr = self._recurrent(h, w)
            rec = q("recurrent", lambda: self._matmul(hr, w["recurrent"],
                                                      w.get("recurrent_bias")))
            if self.reset_after:
                rec_zr, r_h = tf.split(rec, [2 * u, u], axis=-1)
            else:
                rec_zr = rec
            zr_pre = q("gates", lambda: x_zr + rec_zr)
        if h is not None or (self.reset_after and r_h is not None):
            zr = q("update_reset", lambda: tf.sigmoid(zr_pre))
            z, r = tf.split(zr, 2, axis=-1)
        else:  # step 0 without a term in r: a SPLIT with an unused output would stay float
            z = q("update_reset", lambda: tf.sigmoid(zr_pre[:, :u]))
        if self.reset_after and r_h is not None:
            gated = q("reset_recurrent", lambda: r * r_h)
            pre = q("candidate_sum", lambda: x_h + gated)
        elif not self.reset_after and h is not None:
            rh = q("reset_hidden", lambda: r * hr)
            rec_h = q("candidate_recurrent", lambda: self._matmul(rh, w["candidate_recurrent"]))
            pre = q("candidate_sum", lambda: x_h + rec_h)
        else:
            pre = x_h
        candidate = q("candidate", lambda: tf.tanh(pre))
        if h is None:  # h_{-1} = 0: h = hh - z * hh
            update = q("update", lambda: z * candidate)
            h = self._hidden(t, lambda: candidate - update, training)
        else:
            difference = q("difference", lambda: h - candidate)
            update = q("update", lambda: z * difference)
            h = self._hidden(t, lambda: candidate + update, training)
        return h, h

    def load_float_weights(self, layer):
        """Copies a built keras.layers.GRU's kernels and biases (both rows with reset_after)."""
        cell = layer.cell
        self.kernel.assign(cell.kernel)
        self.recurrent_kernel.assign(cell.recurrent_kernel)
        if self.bias is None:
            return
        bias = np.asarray(cell.bias)
        if self.reset_after:
            self.bias.assign(bias[0])
            self.recurrent_bias.assign(bias[1])
        else:
            self.bias.assign(bias)

    def get_config(self):
        config = super().get_config()
        config.update(reset_after=self.reset_after)
        return config


_DIRECTION_CLASSES = {}  # class name -> class, filled below


@keras.saving.register_keras_serializable(package="tfqat")
class QuantBidirectional(CompositeQuantLayer):
    """keras.layers.Bidirectional around an LSTM/GRU/SimpleRNN, as two unrolled directions.

    The backward direction runs the steps in reverse (go_backwards) and, with
    return_sequences, its hidden states are packed in input order, as Keras re-orders
    them. Its tags (and so its .tflite scopes) start with `backward_`, the forward
    direction's with `forward_`. The merge:
    - "concat": CONCATENATION; int8 concatenation needs one scale for its inputs and
      output, so both directions' output hidden states are rounded (tied, ahead) by the
      one `merge` quantizer, which tracks their concatenation (its value is the output);
    - "sum" (ADD), "mul" (MUL): each direction's output has its own quantizer, the
      rule's follows the merge;
    - "ave": ADD (its own `sum` quantizer), then MUL by 0.5.

    Example:
      >>> bi = QuantBidirectional("QuantLSTM", {"units": 4, "timesteps": 3}, "concat", name="bi")
      >>> bi(tf.random.normal([2, 3, 5])).shape
      TensorShape([2, 8])
    """

    MERGE_MODES = ("concat", "sum", "mul", "ave")

    def __init__(self, rnn_class, rnn_config, merge_mode="concat", **kwargs):
        super().__init__(**kwargs)
        if rnn_class not in _DIRECTION_CLASSES or merge_mode not in self.MERGE_MODES:
            raise ValueError(f"QuantBidirectional '{self.name}' takes one of "
                             f"{sorted(_DIRECTION_CLASSES)} and a merge_mode in "
                             f"{self.MERGE_MODES}; got {rnn_class!r}, {merge_mode!r}.")
        self.rnn_class, self.merge_mode = rnn_class, merge_mode
        self.rnn_config = dict(rnn_config)
        # SimpleRNN's hidden states are TANH's outputs: at TANH's fixed scale, the concatenated
        # ones need no requantize (a tracked range costs a QUANTIZE op per direction).
        fixed = _DIRECTION_CLASSES[rnn_class].hidden_range
        shared = self._add_inner_quantizer("merge", fixed_range=fixed) \
            if merge_mode == "concat" else None
        if merge_mode == "ave":
            self._add_inner_quantizer("sum")
        cls = _DIRECTION_CLASSES[rnn_class]
        common = dict(self.rnn_config, activation_bits=self.activation_bits,
                      ema_decay=self.ema_decay, quant_delay=self.quant_delay,
                      output_quantized=shared is None, shared_output=shared, name=self.name)
        common.pop("go_backwards", None)
        self.forward_layer = cls(**common, tag_prefix="forward_")
        self.backward_layer = cls(**common, tag_prefix="backward_", go_backwards=True,
                                  align_sequence=True)

    def build(self, input_shape):
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)
        self._build_inner_quantizers()

    def call(self, inputs, training=None):
        training = bool(training)
        forward = self.forward_layer(inputs, training=training)
        backward = self.backward_layer(inputs, training=training)
        if self.merge_mode == "concat":
            floats = [self._direction_floats(layer)
                      for layer in (self.forward_layer, self.backward_layer)]
            self._used_tags.add("merge")
            self._merge_fq(tf.concat(floats, axis=-1), training=training)  # tracks the range
            return tf.concat([forward, backward], axis=-1)
        if self.merge_mode == "sum":
            return forward + backward
        if self.merge_mode == "mul":
            return forward * backward
        return self._inner("sum", lambda: forward + backward, training) * 0.5

    @staticmethod
    def _direction_floats(layer):
        hidden = layer._output_floats
        if not layer.return_sequences:
            return hidden[-1]
        return tf.stack(hidden[::-1] if layer.align_sequence else hidden, axis=1)

    @property
    def output_quantizer(self):
        """With merge_mode "concat", the quantizer whose scale the output has; else None."""
        return self._merge_fq if self.merge_mode == "concat" else None

    @property
    def inner_quantizers(self) -> list:
        """The merge's quantizers, then each direction's."""
        return [*super().inner_quantizers, *self.forward_layer.inner_quantizers,
                *self.backward_layer.inner_quantizers]

    @property
    def inner_tensors(self) -> list:
        """Each direction's inner tensors (the shared `merge` quantizer's are the
        directions' output hidden states), then the average's sum."""
        own = [(tag, name) for tag, name in super().inner_tensors if tag != "merge"]
        return [*self.forward_layer.inner_tensors, *self.backward_layer.inner_tensors, *own]

    def load_float_weights(self, layer):
        """Copies a built keras.layers.Bidirectional's two directions' weights."""
        self.forward_layer.load_float_weights(layer.forward_layer)
        self.backward_layer.load_float_weights(layer.backward_layer)

    def get_config(self):
        config = super().get_config()
        config.update(rnn_class=self.rnn_class, rnn_config=self.rnn_config,
                      merge_mode=self.merge_mode)
        return config


_DIRECTION_CLASSES.update(QuantLSTM=QuantLSTM, QuantGRU=QuantGRU, QuantSimpleRNN=QuantSimpleRNN)


@keras.saving.register_keras_serializable(package="tfqat")
class MergeTimeSteps(keras.layers.Layer):
    """(batch, time, ...) -> (batch * time, ...): a RESHAPE, so the int8 scale is kept.

    With SplitTimeSteps after it, a layer runs on each time step, as inside
    keras.layers.TimeDistributed.

    Example:
      >>> MergeTimeSteps()(tf.zeros([2, 3, 5, 5, 1])).shape
      TensorShape([6, 5, 5, 1])
    """

    def call(self, inputs):
        return tf.reshape(inputs, [-1, *inputs.shape[2:]])

    def compute_output_shape(self, input_shape):
        merged = None if input_shape[0] is None or input_shape[1] is None \
            else input_shape[0] * input_shape[1]
        return (merged, *input_shape[2:])


@keras.saving.register_keras_serializable(package="tfqat")
class SplitTimeSteps(keras.layers.Layer):
    """(batch * time, ...) -> (batch, time, ...) for a fixed `timesteps`; a RESHAPE.

    Example:
      >>> SplitTimeSteps(3)(tf.zeros([6, 4])).shape
      TensorShape([2, 3, 4])
    """

    def __init__(self, timesteps, **kwargs):
        super().__init__(**kwargs)
        self.timesteps = int(timesteps)

    def call(self, inputs):
        return tf.reshape(inputs, [-1, self.timesteps, *inputs.shape[1:]])

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.timesteps
        return (batch, self.timesteps, *input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update(timesteps=self.timesteps)
        return config
