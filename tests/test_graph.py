import keras
import pytest

from tfqat.rewrite.graph import GraphError, TensorRef, flatten_model, functional_of


def test_flatten_lists_nodes_in_topological_order_with_tensor_ids():
    inp = keras.Input((4,), name="x")
    a = keras.layers.Dense(3, name="a")(inp)
    b = keras.layers.Dense(3, name="b")(inp)
    out = keras.layers.Add(name="sum")([a, b])
    graph = flatten_model(keras.Model(inp, out))
    names = [n.layer.name for n in graph.nodes]
    assert names.index("sum") > names.index("a") and names.index("sum") > names.index("b")
    (spec,) = graph.inputs
    assert spec.name == "x" and spec.shape == (None, 4)
    add = graph.nodes[names.index("sum")]
    assert add.inputs == [graph.nodes[names.index("a")].outputs[0],
                          graph.nodes[names.index("b")].outputs[0]]
    assert isinstance(add.args[0][0], TensorRef)  # the list structure survives
    assert graph.output_ids() == add.outputs
    assert [n.layer.name for n in graph.consumers(spec.id)] == sorted(["a", "b"])


def test_nested_models_are_expanded_with_connected_tensors():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(2, name="inner_dense")(inner_in), name="inner")
    inp = keras.Input((4,))
    out = keras.layers.ReLU(name="outer_relu")(inner(inp))
    graph = flatten_model(keras.Model(inp, out))
    dense, relu = graph.nodes
    assert (dense.layer.name, relu.layer.name) == ("inner_dense", "outer_relu")
    assert dense.inputs == [graph.inputs[0].id] and relu.inputs == dense.outputs


def test_layer_names_include_inputs():
    inp = keras.Input((4,), name="features")
    graph = flatten_model(keras.Model(inp, keras.layers.Dense(1, name="head")(inp)))
    assert graph.layer_names() == {"features", "head"}


def test_non_model_is_refused():
    with pytest.raises(GraphError, match="keras.Model"):
        functional_of(keras.layers.Dense(2))
