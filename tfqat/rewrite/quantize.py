"""`quantize_model`: rewrites a float Keras model into a QAT model.

Steps: flatten the graph (nested models expanded), split non-linear
activations off Conv/Dense layers, match the rewrite rules of `tfqat.rewrite.rules`
node by node, and rebuild a Functional model in which every tensor that will
be int8 in the exported model carries a fake quant.
"""

from __future__ import annotations


import keras

from tfqat.rewrite import rules as rules_lib
from tfqat.config import QuantConfig
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.rewrite import record as record_lib
from tfqat.rewrite import graph as graph_lib
from tfqat.rewrite.graph import Graph, Node, TensorRef, flatten_model, substitute
from tfqat.rewrite.record import QATModel, RecordBuilder


class UnsupportedLayerError(ValueError):
    """A layer that no rewrite rule quantizes."""


def quantize_model(model, config: QuantConfig | None = None, registry=None):
    """Returns a new QAT model with the float model's weights; `model` is untouched.

    Conv2D/DepthwiseConv2D/Dense [+ BatchNormalization] [+ ReLU/ReLU6] become one
    fused layer with BN folded into its fake-quantized weights, and activation
    fake quants go on every tensor that the exported model holds as int8.

    Example:
      >>> inp = keras.Input((28, 28, 1))
      >>> x = keras.layers.Conv2D(8, 3, use_bias=False)(inp)
      >>> x = keras.layers.BatchNormalization()(x)
      >>> x = keras.layers.ReLU()(x)
      >>> out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
      >>> qat = quantize_model(keras.Model(inp, out), QuantConfig(bn_freeze_delay=500))
      >>> qat.compile("adam", "sparse_categorical_crossentropy")  # then qat.fit(...)

    `registry` (a tfqat.QuantRegistry) adds rules for the user's own layers;
    they are tried before the built-in ones.
    """
    config = config or QuantConfig()
    graph = flatten_model(model)
    config.check_layer_names(graph.layer_names())
    # Every new layer computes in float32 under any global policy (mixed_float16, ...): see
    # rules.base.float32_dtype. The user's policy is restored for their own layers after.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        _split_activations(graph, config)
        _reshape_global_pools_of_one_position(graph, config)
        _move_dropout_after_relu(graph, config)
        duplicates = _merge_duplicate_calls(graph, config)
        rules = registry.rules if registry is not None else rules_lib.RULES
        return _Rebuilder(graph, config, rules, duplicates).build(name=f"{model.name}_qat")
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _split_activations(graph: Graph, config: QuantConfig) -> None:
    """Conv/Dense/SeparableConv(activation=f) -> the same with activation="linear" + Activation(f),
    so rules see f."""
    new_nodes = []
    for node in graph.nodes:
        layer = node.layer
        if not rules_lib.takes_activation_argument(layer) or config.is_excluded(layer) or \
                keras.activations.serialize(layer.activation) == "linear":
            new_nodes.append(node)
            continue
        linear = type(layer).from_config({**rules_lib.float32_config(layer), "activation": "linear"})
        linear.build(graph.shapes[node.inputs[0]])
        linear.set_weights(layer.get_weights())
        activation = keras.layers.Activation(layer.activation, name=f"{layer.name}_activation")
        (out,) = node.outputs
        hidden = graph.new_tensor(graph.shapes[out])
        new_nodes.append(Node(linear, node.args, node.kwargs, [hidden], layer.name, node.scope))
        new_nodes.append(Node(activation, (TensorRef(hidden),), {}, [out], layer.name, node.scope))
    graph.nodes = new_nodes


_GLOBAL_POOLS = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                 keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D)


def _reshape_global_pools_of_one_position(graph: Graph, config: QuantConfig) -> None:
    """A global pool of another global pool's output (one spatial position) -> a Reshape.

    The pool is an identity on values there. As a pool it would be a MEAN (or REDUCE_MAX)
    of one value, and the converter merges a MEAN of another MEAN's 1x1 output into one
    MEAN, leaving the RESHAPE between them with two scales: the conversion failed ("same
    scale constraint"; found by the graph fuzzer, issue 14). A Reshape keeps its input's
    scale, so the pair becomes one MEAN and a RESHAPE, as the converter wants it.
    """
    new_nodes = []
    for node in graph.nodes:
        layer = node.layer
        if type(layer) not in _GLOBAL_POOLS or config.is_excluded(layer) or \
                len(node.inputs) != 1 or len(node.outputs) != 1 or node.kwargs:
            new_nodes.append(node)
            continue
        shape = graph.shapes[node.inputs[0]]
        spatial = shape[2:] if layer.data_format == "channels_first" else shape[1:-1]
        producer = graph.producer(node.inputs[0])
        # Only a pool of another global pool's output: a pool of a 1x1 conv output converts
        # as it is (keras.applications at small input sizes), and keeps its own MEAN.
        if any(size != 1 for size in spatial) or producer is None or \
                type(producer.layer) not in _GLOBAL_POOLS:
            new_nodes.append(node)
            continue
        (out,) = node.outputs
        reshape = keras.layers.Reshape(graph.shapes[out][1:], name=layer.name)
        new_nodes.append(Node(reshape, node.args, {}, [out], node.config_name, node.scope))
    graph.nodes = new_nodes


# Dropout multiplies by 0 or 1 / (1 - rate), both >= 0, so it commutes with ReLU.
_POSITIVE_DROPOUTS = (keras.layers.Dropout, keras.layers.SpatialDropout1D,
                      keras.layers.SpatialDropout2D)


def _is_plain_relu(layer) -> bool:
    if type(layer) is keras.layers.ReLU:
        return layer.max_value is None and not layer.threshold and not layer.negative_slope
    return type(layer) is keras.layers.Activation and \
        keras.activations.serialize(layer.activation) == "relu"


def _move_dropout_after_relu(graph: Graph, config: QuantConfig) -> None:
    """x -> Dropout -> ReLU becomes x -> ReLU -> Dropout (the same in training and inference).

    The converter drops the Dropout and fuses the ReLU into the op before it, rounding
    once after the ReLU; with the Dropout moved, the rules fuse the ReLU the same way (a
    ReLU after the Dropout was rounded twice: 3 LSB at the ReLU, found by the sequence
    fuzzer behind a registered MUL layer).
    """
    readers = {}
    for node in graph.nodes:
        for tid in node.inputs:
            readers[tid] = readers.get(tid, 0) + 1
    outputs = set(graph.output_ids())
    nodes = graph.nodes
    for i, dropout in enumerate(nodes[:-1]):
        if type(dropout.layer) not in _POSITIVE_DROPOUTS or len(dropout.outputs) != 1:
            continue
        (middle,) = dropout.outputs
        if readers.get(middle) != 1 or middle in outputs:
            continue
        j = next(k for k in range(i + 1, len(nodes)) if middle in nodes[k].inputs)
        relu = nodes[j]
        if not _is_plain_relu(relu.layer) or relu.inputs != [middle] or relu.kwargs or \
                config.is_excluded(relu.layer) or config.is_excluded(dropout.layer):
            continue
        nodes[i] = Node(relu.layer, dropout.args, {}, [middle], relu.config_name, relu.scope)
        nodes[j] = Node(dropout.layer, relu.args, dropout.kwargs, relu.outputs,
                        dropout.config_name, dropout.scope)


# Weightless, deterministic layers that the converter computes once when several calls read
# the same tensors with the same config (its common-subexpression elimination).
_MERGEABLE = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.Softmax, keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.UpSampling2D,
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute, keras.layers.Add,
    keras.layers.Subtract, keras.layers.Multiply, keras.layers.Concatenate)


def _merge_duplicate_calls(graph: Graph, config: QuantConfig) -> dict:
    """Merges calls of equal weightless layers on the same tensors into the first such call.

    TF's converter computes such calls once (NASNet applies three ReLU layers to one
    conv's output, and two equal average pools to one tensor), and then fuses a ReLU into
    the conv when it is that conv's only reader. The QAT model must do the same: three
    ReLUs with a fake quant each would keep a fake quant on the conv's output, rounding
    twice where the .tflite rounds once (2 LSB). Returns {merged call's float layer name:
    the node kept in its place}.
    """
    kept = {}  # (class, config, inputs, settings) -> node
    alias = {}  # tensor id of a merged call's output -> the kept call's
    outputs = set(graph.output_ids())
    merged, nodes = {}, []
    for node in graph.nodes:
        if alias:
            node.args = _rename_refs(node.args, alias)
            node.kwargs = _rename_refs(node.kwargs, alias)
        layer = node.layer
        if type(layer) not in _MERGEABLE or config.is_excluded(layer) or \
                any(tid in outputs for tid in node.outputs):
            nodes.append(node)
            continue
        settings = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = (type(layer), repr(sorted(settings.items())), repr((node.args, node.kwargs)),
               config.for_layer(node.config_name))
        if key not in kept:
            kept[key] = node
            nodes.append(node)
            continue
        alias.update(zip(node.outputs, kept[key].outputs))
        merged[node.float_name] = kept[key]
    graph.nodes = nodes
    return merged


def _rename_refs(structure, alias):
    return keras.tree.map_structure(
        lambda leaf: TensorRef(alias.get(leaf.id, leaf.id)) if isinstance(leaf, TensorRef)
        else leaf, structure)


class _Rebuilder:
    def __init__(self, graph: Graph, config: QuantConfig, rules, duplicates=None):
        self.graph = graph
        self.duplicates = duplicates or {}
        self.config = config
        self.rules = rules
        self.values = {}  # tensor id -> new KerasTensor
        self.quantized = set()  # tensor ids whose new tensor is fake-quantized
        self.record = RecordBuilder()
        self.scale_source = {}  # tensor id -> the ActivationQuantizer that sets its int8 scale
        self.clones = {}  # id(old layer) -> clone, so shared float layers stay shared
        self.used_names = set()
        self.layer_uses = {}
        self.producer_config = {spec.id: spec.name for spec in graph.inputs}
        self.consumer_count = {}
        for node in graph.nodes:
            self.layer_uses[id(node.layer)] = self.layer_uses.get(id(node.layer), 0) + 1
            for tid in node.outputs:
                self.producer_config[tid] = node.config_name
        for node in graph.nodes:
            for tid in node.inputs:
                self.consumer_count[tid] = self.consumer_count.get(tid, 0) + 1
        for tid in graph.output_ids():
            self.consumer_count[tid] = self.consumer_count.get(tid, 0) + 1
        # Concatenation scale groups. int8 CONCATENATION needs its inputs at its output's
        # scale (the converter requantizes any other input with a QUANTIZE op), so each tensor
        # that would get a tracked range of its own is instead rounded to the scale of the
        # first Concatenate that reads it, and that Concatenate's output to the next one's:
        # one quantizer per tree of concatenations (a DenseNet dense block), tracking the
        # root's output, which holds every member's values. Tensors at another scale (a
        # fixed range, another group's) keep it and are requantized.
        # int8 MAXIMUM and MINIMUM need their inputs and output at one scale too; they join
        # the same groups, but claim only inputs that they alone read (not a concatenation's
        # output): a member is clipped to the group's range, which holds the max (min) of the
        # members, not each member's values. Rounding and clipping are monotone, so they
        # commute with max and min: the result is the same as rounding the output.
        self.concat_claim = {}  # tensor id -> index of the Concatenate whose scale it takes
        self.concat_output = {}  # output tensor id of a Concatenate -> its node index
        for index, node in enumerate(graph.nodes):
            if config.is_excluded(node.layer):
                continue
            if rules_lib.is_concatenation(node.layer):
                self.concat_output[node.outputs[0]] = index
                for tid in node.inputs:
                    self.concat_claim.setdefault(tid, index)
            elif rules_lib.merges.is_max_min(node.layer):
                self.concat_output[node.outputs[0]] = index
                for tid in node.inputs:
                    if self.consumer_count.get(tid) == 1 and not self._made_by_concatenate(tid):
                        self.concat_claim.setdefault(tid, index)
        # An op that keeps its input's scale (max pool, padding; average pool, bilinear
        # resize) passes a claim on to its input when it is that input's only reader: the
        # input is computed at the concatenation's scale. Else the op's output stays at its
        # input's scale and the converter requantizes it (DenseNet121: 4 QUANTIZE ops, at the
        # stem's conv -> padding -> max pool and each transition's conv -> average pool).
        for node in reversed(graph.nodes):
            layer = node.layer
            if len(node.inputs) != 1 or len(node.outputs) != 1 or config.is_excluded(layer) or \
                    not (rules_lib.is_scale_preserving(layer) or rules_lib.is_same_scale_op(layer)):
                continue
            (tid,) = node.inputs
            claim = self.concat_claim.get(node.outputs[0])
            if claim is not None and tid not in self.concat_claim and \
                    self.consumer_count.get(tid) == 1 and graph.producer(tid) is not None:
                self.concat_claim[tid] = claim
        self.group_quantizers = {}  # index of a root Concatenate -> its ActivationQuantizer
        self.pending_groups = set()  # group quantizers whose tracking (root) call is still ahead

    def build(self, name):
        new_inputs = []
        for spec in self.graph.inputs:
            tensor = keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=self._unique(spec.name))
            self.values[spec.id] = tensor
            new_inputs.append(tensor)
        consumed = set()
        for index, node in enumerate(self.graph.nodes):
            if index in consumed:
                continue
            if self.config.is_excluded(node.layer):
                self._emit_float(node)
                continue
            rule, matched = self._match(index)
            consumed.update(matched.values())
            self._emit(rule, matched)
        outputs = [self.values[tid] if self._made_by_excluded(tid)
                   else self._quantized_value(tid, self.producer_config[tid])
                   for tid in self.graph.output_ids()]
        for float_name, node in self.duplicates.items():
            self.record.add_duplicate(float_name, node.float_name)
        structure = keras.tree.pack_sequence_as(self.graph.outputs, outputs)
        inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
        return QATModel(inputs, structure, name=name, quantization_record=self.record.build())

    # ---- matching ---------------------------------------------------------
    def _match(self, index):
        node = self.graph.nodes[index]
        for refuses, message in _REFUSALS:
            if refuses(node):
                raise UnsupportedLayerError(message(node))
        for rule in self.rules:
            matched = self._match_rule(rule, index)
            if matched is not None:
                return rule, matched
        raise UnsupportedLayerError(_unsupported_message(node))

    def _match_rule(self, rule, index):
        nodes = self.graph.nodes
        first, *rest = rule.pattern
        if not first.matches(nodes[index].layer):
            return None
        matched = {first.name: index}  # step name -> node index, in chain order
        last = index
        for step in rest:
            following = self._sole_follower(last)
            if following is not None and step.matches(nodes[following].layer):
                matched[step.name] = last = following
            elif not step.optional:
                return None
        return matched

    def _sole_follower(self, index):
        """The index of the only node that reads this node's only output, if any."""
        node = self.graph.nodes[index]
        if len(node.outputs) != 1 or self.consumer_count.get(node.outputs[0], 0) != 1:
            return None
        (tid,) = node.outputs
        for later in range(index + 1, len(self.graph.nodes)):
            follower = self.graph.nodes[later]
            if tid in follower.inputs:
                if len(follower.inputs) != 1 or self.config.is_excluded(follower.layer):
                    return None
                return later
        return None

    # ---- emitting -----------------------------------------------------------
    def _emit(self, rule, matched):
        nodes = [self.graph.nodes[i] for i in matched.values()]
        first, last = nodes[0], nodes[-1]
        for node in nodes:
            if self.layer_uses[id(node.layer)] > 1 and getattr(node.layer, "weights", None):
                raise UnsupportedLayerError(
                    f"Layer '{node.layer.name}' ({type(node.layer).__name__}) is called "
                    f"{self.layer_uses[id(node.layer)]} times with shared weights; tfqat cannot "
                    "quantize a shared layer. Exclude it, or give each call its own layer.")
        cfg = self.config.for_layer(first.config_name)
        match = {step.name: None for step in rule.pattern}
        match.update({name: self.graph.nodes[i].layer for name, i in matched.items()})
        replacement = rule.build(match, cfg)
        for tid in first.inputs:
            self._quantized_value(tid, self.producer_config[tid])
        args = substitute(first.args, self.values)
        kwargs = substitute(first.kwargs, self.values)
        value = None
        for position, layer in enumerate(replacement.layers):
            layer.name = self._unique(layer.name)
            value = layer(*args, **kwargs) if position == 0 else layer(value)
        replacement.load_weights()
        for layer in replacement.layers:  # quantizers a builder made (between or inside layers)
            if isinstance(layer, ActivationQuantizer):
                self.record.add_quantizer(layer.name, layer.fixed_range is not None, None)
            for inner in getattr(layer, "inner_quantizers", ()):
                self.record.add_quantizer(inner.name, inner.fixed_range is not None, None,
                                          owner=layer.name)
        # One output, or several (keras.ops.split): each gets the replacement's policy.
        values = keras.tree.flatten(value) if len(last.outputs) > 1 else [value]
        for out, output_value in zip(last.outputs, values):
            self.values[out] = output_value
            policy, quantizer = self._set_output_scale(out, output_value, replacement, cfg, first)
        float_layers = list(dict.fromkeys(node.float_name for node in nodes))
        qat_layers = [layer.name for layer in replacement.layers]
        self.record.add_decision(float_layers, rule.name, qat_layers, policy,
                                 quantizer.name if quantizer is not None else None)

    def _set_output_scale(self, out, value, replacement, cfg, first):
        """Applies the replacement's output scale policy: (policy, quantizer or None)."""
        output = replacement.output
        source = self.scale_source.get(first.inputs[0]) if len(first.inputs) == 1 else None
        # A layer whose output its own inner quantizer rounds (QuantBidirectional's concat).
        inner_output = getattr(replacement.layers[-1], "output_quantizer", None)
        if output.kind == "none" and inner_output is not None:
            source = inner_output
        if output.kind == "none":
            self.quantized.add(out)
            if source is None:
                return record_lib.SHARED, None
            self.scale_source[out] = source
            if self.consumer_count.get(out, 0) > 1:
                # A branching int8 tensor gets its scale explicitly (the same quantizer,
                # tied): else the converter leaves a consumer conv float when another
                # branch has a fake quant (Inception: max pool -> 1x1 conv, and -> pool).
                self.values[out] = self._tied(source, value)
            return record_lib.SHARED, source
        if output.kind == "input" and source is not None:
            # Before the concatenation case: the int8 output of an op that keeps its input's
            # scale is at that scale even when a concatenation alone reads it (the converter
            # then requantizes once to the concatenation's), so it is rounded there.
            self.values[out] = self._tied(source, value)
            self.quantized.add(out)
            self.scale_source[out] = source
            return record_lib.TIED, source
        # "tracked", "fixed", or "input" whose input scale has no known quantizer
        quantizer = self._add_quantizer(out, cfg, fixed_range=output.fixed_range,
                                        name=replacement.layers[-1].name)
        root = self._concat_root(out) if output.fixed_range is None else None
        if root is not None and out not in self.graph.nodes[root].outputs:
            # rounded to the scale of the concatenation (or Maximum/Minimum) that reads it
            reader = self.graph.nodes[self.concat_claim[out]].layer
            policy = record_lib.MAX_MIN if rules_lib.merges.is_max_min(reader) else record_lib.CONCAT
            return policy, quantizer
        return (record_lib.OWN if output.fixed_range is None else record_lib.FIXED), quantizer

    def _tied(self, quantizer, value):
        self.record.add_tied_call(quantizer.name)
        # A concatenation group's quantizer tracks its range at the root, later in the graph.
        return quantizer(value, tied=True, ahead=quantizer.name in self.pending_groups)

    def _emit_float(self, node):
        layer = node.layer
        clone = self.clones.get(id(layer))
        fresh = clone is None
        if fresh:
            clone = self._float_copy(layer)
            self.clones[id(layer)] = clone
        outputs = clone(*substitute(node.args, self.values), **substitute(node.kwargs, self.values))
        if fresh and clone is not layer and isinstance(layer, keras.layers.Layer):
            clone.set_weights(layer.get_weights())
        if fresh:
            self.record.add_decision([node.float_name], "excluded", [clone.name], record_lib.FLOAT)
        for tid, value in zip(node.outputs, keras.tree.flatten(outputs)):
            self.values[tid] = value

    def _float_copy(self, layer):
        """A new layer like the excluded `layer` (weights are set once it is built).

        Calling the user's own layer would add a node to the user's model (and
        tfqat.diagnostics.report then finds no single float counterpart for it).
        """
        if type(layer) is keras.layers.Lambda:
            # from_config cannot rebuild a Python lambda (refused in safe mode) or an
            # unregistered function; a new Lambda around the same function is a copy.
            copy = graph_lib.copy_lambda(layer, dtype=rules_lib.float32_dtype(layer))
        elif callable(getattr(layer, "save_assets", None)):
            # Reuse, as no copy is possible: a lookup table (StringLookup, IntegerLookup,
            # TextVectorization) keeps its adapted vocabulary in neither config nor weights.
            # Calling the user's layer adds a node to the user's model.
            return self._reuse(layer)
        else:
            try:
                copy = rules_lib.clone_layer(layer)
            except (TypeError, ValueError, NotImplementedError):
                if getattr(layer, "weights", None):
                    raise
                # Reuse, as no copy is possible: a weightless layer that cannot be rebuilt
                # from its config (a custom layer without a complete get_config) has nothing
                # else to copy. Calling the user's layer adds a node to the user's model.
                return self._reuse(layer)
        copy.name = self._unique(copy.name)
        return copy

    def _reuse(self, layer):
        if layer.name in self.used_names:
            raise UnsupportedLayerError(
                f"Excluded layer '{layer.name}' ({type(layer).__name__}) cannot be copied, and "
                "its name is taken in the QAT model. Rename it.")
        self.used_names.add(layer.name)
        return layer

    def _concat_root(self, tid):
        """The index of the root Concatenate of the scale group of `tid`, or None."""
        index = self.concat_output.get(tid, self.concat_claim.get(tid))
        if index is None:
            return None
        while (parent := self.concat_claim.get(self.graph.nodes[index].outputs[0])) is not None:
            index = parent
        return index

    def _made_by_concatenate(self, tid):
        producer = self.graph.producer(tid)
        return producer is not None and rules_lib.is_concatenation(producer.layer)

    def _made_by_excluded(self, tid):
        return any(tid in node.outputs and self.config.is_excluded(node.layer)
                   for node in self.graph.nodes)

    def _add_quantizer(self, tid, cfg, fixed_range=None, name=None):
        raw = self.values[tid]
        root = self._concat_root(tid) if fixed_range is None else None
        if root is not None:
            quantizer = self.group_quantizers.get(root)
            if quantizer is None:
                root_node = self.graph.nodes[root]
                root_cfg = self.config.for_layer(root_node.config_name)
                quantizer = self.group_quantizers[root] = ActivationQuantizer(
                    bits=root_cfg.activation_bits, ema_decay=root_cfg.ema_decay,
                    quant_delay=root_cfg.quant_delay, name=self._unique(f"{root_node.layer.name}_fq"))
                root_output = self.graph.nodes[root].outputs[0]
                self.record.add_quantizer(quantizer.name, False, self._float_tensor(root_output))
                self.pending_groups.add(quantizer.name)
            if tid in self.graph.nodes[root].outputs:
                self.values[tid] = quantizer(raw)
                self.pending_groups.discard(quantizer.name)
            else:  # a member computed before the root: rounded ahead of its tracking call
                self.values[tid] = quantizer(raw, tied=True, ahead=True)
                self.record.add_tied_call(quantizer.name)
            self.quantized.add(tid)
            self.scale_source[tid] = quantizer
            return quantizer
        quantizer = ActivationQuantizer(
            bits=cfg.activation_bits, ema_decay=cfg.ema_decay, quant_delay=cfg.quant_delay,
            fixed_range=fixed_range, name=self._unique(f"{name}_fq"))
        self.values[tid] = quantizer(raw)
        self.quantized.add(tid)
        self.scale_source[tid] = quantizer
        self.record.add_quantizer(quantizer.name, fixed_range is not None, self._float_tensor(tid))
        return quantizer

    def _float_tensor(self, tid):
        """The float model's name for tensor `tid`: its layer's (or input's) name, if it has one."""
        if not self.graph.is_original(tid):
            return None  # made by the rewrite (a conv's output before a split-off activation)
        producer = self.graph.producer(tid)
        if producer is None:
            return next(spec.name for spec in self.graph.inputs if spec.id == tid)
        return producer.float_name if len(producer.outputs) == 1 else None

    def _quantized_value(self, tid, config_name):
        """The fake-quantized value of tensor `tid`, adding one fake quant if needed.

        int32/int64 tensors (token ids) stay as they are: the .tflite keeps them int32. So do
        bool tensors (a layer that cannot take one says so).
        """
        if tid not in self.quantized and str(self.values[tid].dtype) in ("int32", "int64", "bool"):
            return self.values[tid]
        if tid not in self.quantized:
            quantizer = self._add_quantizer(tid, self.config.for_layer(config_name),
                                            name=config_name)
            if self.graph.producer(tid) is None:  # a model input: its quantizer is its decision
                self.record.add_decision([config_name], "input", [quantizer.name], record_lib.OWN,
                                         quantizer.name)
        return self.values[tid]

    def _unique(self, name):
        candidate, suffix = name, 1
        while candidate in self.used_names:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self.used_names.add(candidate)
        return candidate


def _division_message(node) -> str:
    layer = node.layer
    return (
        f"Cannot quantize Keras op '{layer.name}' ({type(layer).__name__}): it divides by a "
        f"tensor (or divides a constant by one), and TFLite has no int8 DIV; only a tensor "
        f"divided by a constant is int8 (a MUL). Leave it in float with "
        f"QuantConfig(exclude=('{layer.name}',)) (export_tflite then refuses the model unless "
        f"called with allow_float_ops=True), or rewrite the model without it.")


def _wide_merge_message(node) -> str:
    layer = node.layer
    kind = type(layer).__name__
    return (
        f"Cannot quantize layer '{layer.name}' ({kind}) of {len(node.args[0])} inputs: TFLite's "
        f"int8 kernel takes two, and the converter would leave the intermediate results float. "
        f"Write it as nested two-input {kind} layers, or leave it in float with "
        f"QuantConfig(exclude=('{layer.name}',)).")


# Nodes that a rule's pattern would match but that have no int8 form: (predicate, message).
_REFUSALS = ((rules_lib.divides_by_tensor, _division_message),
             (rules_lib.merges_more_than_two, _wide_merge_message),
             (rules_lib.attention.uses_unsupported_attention_call,
              rules_lib.attention.unsupported_attention_call_message),
             (rules_lib.recurrent.uses_unsupported_recurrent_call,
              rules_lib.recurrent.unsupported_recurrent_call_message),
             (rules_lib.keras_ops.clip_fuses_as_activation,
              rules_lib.keras_ops.clip_refusal_message))


# What to use instead of a layer that has no int8 form, where there is a simple answer.
_REPLACEMENT_HINTS = {
    keras.layers.Lambda: "A Lambda runs Python that tfqat cannot see into: wrap the computation "
                         "in keras.ops calls on the Functional graph instead of a Lambda (tfqat "
                         "quantizes slicing, transpose, reshape, mean, matmul, concatenate and "
                         "the other ops listed in docs/design.md), or exclude it. ",
}


def _unsupported_message(node) -> str:
    layer = node.layer
    kind = type(layer).__name__
    what = "layer" if isinstance(layer, keras.layers.Layer) else "Keras op"
    hint = _REPLACEMENT_HINTS.get(
        type(layer), "" if what == "layer" else rules_lib.keras_ops.SUPPORTED_HINT)
    return (
        f"Cannot quantize {what} '{layer.name}' ({kind}): no tfqat rewrite rule handles it. "
        f"{hint}"
        f"Either leave it in float with QuantConfig(exclude=('{layer.name}',)) (export_tflite "
        f"then refuses the model unless called with allow_float_ops=True, which makes a hybrid "
        f"model), replace it with supported layers, or set it per layer with "
        f"QuantConfig(overrides={{'{layer.name}': {{...}}}}) once a rule supports it.")
