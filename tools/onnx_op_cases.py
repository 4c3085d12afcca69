"""Writes tests/fixtures/onnx_ops/: one small ONNX model per operator case, and
cases.json with each case's input (batch of 2) and onnxruntime's output on it.

The Rust tests (tests/onnx.rs) load every model, compare the engine's forward with
onnxruntime's output and check its gradient by finite differences. Regenerate with
    python -m venv /tmp/onnx-venv && /tmp/onnx-venv/bin/pip install onnx==1.23.2 onnxruntime==1.32.0 numpy
    /tmp/onnx-venv/bin/python tools/onnx_op_cases.py
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx_ops")
rng = np.random.default_rng(7)
cases = {}


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def case(name, nodes, in_shape, out_name="y", inits=(), opset=17, grad=True, in_type=TensorProto.FLOAT,
         data=None, low=-2.0, high=2.0):
    """One model: input `x` of shape [batch] + in_shape, output `out_name`."""
    x = helper.make_tensor_value_info("x", in_type, ["batch"] + list(in_shape))
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, name, [x], [y], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    if data is None:
        data = rng.uniform(low, high, size=[2] + list(in_shape)).astype(np.float32)
        # Away from the kinks of relu, max, clip and friends, for finite differences.
        data = np.where(np.abs(data) < 0.05, data + 0.1, data).astype(np.float32)
    feed = data.astype(np.int64) if in_type == TensorProto.INT64 else (
        data.astype(np.int32) if in_type == TensorProto.INT32 else data)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": feed})
    cases[name] = {
        "input_shape": list(data.shape),
        "input": [float(v) for v in data.ravel()],
        "output_shape": list(out.shape),
        "output": [float(v) for v in out.astype(np.float32).ravel()],
        "grad": grad,
    }


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name="/" + op.lower() + "/" + op + "_" + outputs[0], **attrs)


def w(*shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --- convolutions and pooling ---
case("conv_depthwise", [node("Conv", ["x", "w", "b"], group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
     [4, 6, 6], inits=[const("w", w(4, 1, 3, 3)), const("b", w(4))])
case("conv_asymmetric", [node("Conv", ["x", "w"], pads=[0, 1, 2, 0], strides=[2, 1])],
     [2, 7, 6], inits=[const("w", w(3, 2, 3, 2))])
case("conv_dilated_same", [node("Conv", ["x", "w", "b"], auto_pad="SAME_UPPER", strides=[2, 1])],
     [2, 6, 5], inits=[const("w", w(3, 2, 3, 3)), const("b", w(3))])
case("conv_transpose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
                             output_padding=[1, 1])],
     [3, 4, 4], inits=[const("w", w(3, 2, 3, 3)), const("b", w(2))])
case("conv_transpose_groups", [node("ConvTranspose", ["x", "w"], group=2, strides=[1, 2])],
     [4, 3, 3], inits=[const("w", w(4, 1, 2, 2))])
case("maxpool_pads", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], [2, 6, 6])
case("maxpool_asymmetric", [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])],
     [2, 5, 5])
case("maxpool_ceil", [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], [2, 5, 5])
case("avgpool_pads", [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     [2, 6, 6])
case("avgpool_count_pads", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                 count_include_pad=1)], [2, 5, 5])
case("global_avgpool", [node("GlobalAveragePool", ["x"])], [3, 4, 5])
case("global_maxpool", [node("GlobalMaxPool", ["x"])], [3, 4, 5])
case("batchnorm", [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)], [3, 4, 4],
     inits=[const("g", w(3)), const("b", w(3)), const("m", w(3)), const("v", np.abs(w(3)) + 0.5)])

# --- element-wise ---
for op, attrs in [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3}),
                  ("HardSwish", {}), ("Tanh", {}), ("Erf", {}), ("Exp", {}), ("Neg", {}), ("Abs", {})]:
    case(op.lower(), [node(op, ["x"], **attrs)], [3, 4], low=-4.0, high=4.0)
case("gelu", [node("Gelu", ["x"])], [3, 4], opset=20)
case("gelu_tanh", [node("Gelu", ["x"], approximate="tanh")], [3, 4], opset=20)
case("sqrt", [node("Sqrt", ["x"])], [3, 4], low=0.2, high=3.0)
case("reciprocal", [node("Reciprocal", ["x"])], [3, 4], low=0.5, high=3.0)
case("log", [node("Log", ["x"])], [3, 4], low=0.2, high=3.0)
case("pow_const", [node("Pow", ["x", "p"])], [3, 4], inits=[const("p", np.float32(3.0))])
case("pow_values", [node("Pow", ["x", "x"])], [3, 4], low=0.5, high=2.0)
case("clip", [node("Clip", ["x", "lo", "hi"])], [3, 4],
     inits=[const("lo", np.float32(-1.0)), const("hi", np.float32(0.5))])
case("softmax_axis1", [node("Softmax", ["x"], axis=1)], [3, 4])
case("softmax_last", [node("Softmax", ["x"], axis=-1)], [3, 4])
case("add_broadcast", [node("Add", ["x", "c"])], [3, 4, 5], inits=[const("c", w(3, 1, 1))])
case("sub_const_first", [node("Sub", ["c", "x"])], [3, 4], inits=[const("c", w(4))])
case("mul_values", [node("Mul", ["x", "x"], ["m"]), node("Mul", ["m", "c"])], [3, 4], inits=[const("c", w(1, 3, 1))])
case("div_values", [node("Abs", ["x"], ["a"]), node("Add", ["a", "one"], ["d"]), node("Div", ["x", "d"])],
     [3, 4], inits=[const("one", np.float32(1.0))])
case("max_min", [node("Neg", ["x"], ["n"]), node("Max", ["x", "n"], ["mx"]), node("Min", ["x", "c"], ["mn"]),
                 node("Add", ["mx", "mn"])], [3, 4], inits=[const("c", w(4))])
case("where_equal", [node("Relu", ["x"], ["r"]), node("Equal", ["x", "r"], ["e"]), node("Mul", ["x", "x"], ["sq"]),
                     node("Where", ["e", "sq", "x"])], [3, 4])
case("cast_int", [node("Mul", ["x", "ten"], ["t"]), node("Cast", ["t"], ["i"], to=TensorProto.INT64),
                  node("Cast", ["i"], to=TensorProto.FLOAT)], [3, 4], inits=[const("ten", np.float32(10.0))],
     grad=False)

# --- products and normalisation ---
case("gemm", [node("Gemm", ["x", "w", "b"], alpha=0.5, beta=2.0)], [6], inits=[const("w", w(6, 4)), const("b", w(4))])
case("gemm_transb", [node("Gemm", ["x", "w", "b"], transB=1)], [6], inits=[const("w", w(4, 6)), const("b", w(1, 4))])
case("matmul_const", [node("MatMul", ["x", "w"])], [3, 4], inits=[const("w", w(4, 5))])
case("matmul_values", [node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]), node("MatMul", ["x", "t"])], [2, 3, 4])
case("layernorm", [node("LayerNormalization", ["x", "g", "b"], epsilon=1e-5)], [3, 6],
     inits=[const("g", w(6)), const("b", w(6))])
case("layernorm_axis", [node("LayerNormalization", ["x", "g"], axis=-2)], [3, 4],
     inits=[const("g", w(3, 4))])

# --- reductions (axes as attributes before opset 18, as inputs for ReduceSum since 13) ---
case("reducesum_negaxis", [node("ReduceSum", ["x", "ax"], keepdims=0)], [3, 4, 5], inits=[const("ax", np.array([-1], np.int64))])
case("reducemean_keep", [node("ReduceMean", ["x"], axes=[-2, 1], keepdims=1)], [3, 4, 5])
case("reducemax", [node("ReduceMax", ["x"], axes=[1], keepdims=0)], [3, 4])
case("reducemin_opset18", [node("ReduceMin", ["x", "ax"], keepdims=1)], [3, 4], opset=18,
     inits=[const("ax", np.array([-1], np.int64))])
case("reducesumsquare", [node("ReduceSumSquare", ["x"], axes=[2], keepdims=0)], [3, 4])

# --- shapes and indexing ---
case("flatten_view", [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
                      node("Unsqueeze", ["n", "ax0"], ["n1"]),
                      node("Concat", ["n1", "minus1"], ["shape"], axis=0), node("Reshape", ["x", "shape"])],
     [2, 3, 2], inits=[const("zero", np.array(0, np.int64)), const("ax0", np.array([0], np.int64)),
                       const("minus1", np.array([-1], np.int64))])
case("reshape_zero", [node("Reshape", ["x", "shape"])], [6, 2], inits=[const("shape", np.array([0, 3, -1], np.int64))])
case("flatten_negaxis", [node("Flatten", ["x"], axis=-3)], [3, 2, 2])
case("transpose", [node("Transpose", ["x"], perm=[0, 3, 1, 2])], [2, 3, 4])
case("concat_values", [node("Neg", ["x"], ["n"]), node("Concat", ["x", "n"], axis=-1)], [3, 2])
case("slice_steps", [node("Slice", ["x", "st", "en", "ax", "sp"])], [5, 6],
     inits=[const("st", np.array([-1, 1], np.int64)), const("en", np.array([-6, 100], np.int64)),
            const("ax", np.array([1, 2], np.int64)), const("sp", np.array([-2, 2], np.int64))])
case("squeeze_unsqueeze", [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])], [3, 4],
     inits=[const("a", np.array([2, -1], np.int64)), const("b", np.array([2], np.int64))])
case("gather_axis1", [node("Gather", ["x", "i"], axis=1)], [4, 3], inits=[const("i", np.array([[3, 0], [-1, 1]], np.int64))])
case("gather_scalar", [node("Gather", ["x", "i"], axis=1)], [4, 3], inits=[const("i", np.array(2, np.int64))])
case("expand", [node("Expand", ["x", "s"])], [3, 1], inits=[const("s", np.array([1, 3, 4], np.int64))])
case("pad_constant", [node("Pad", ["x", "p", "v"], mode="constant")], [2, 3, 3],
     inits=[const("p", np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64)), const("v", np.float32(0.5))])
case("pad_reflect", [node("Pad", ["x", "p"], mode="reflect")], [2, 4, 4],
     inits=[const("p", np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64))])
case("constant_shape_ops", [node("Constant", [], ["c"], value=numpy_helper.from_array(w(4), "c")),
                            node("ConstantOfShape", ["four"], ["ones"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
                            node("Mul", ["c", "ones"], ["c2"]), node("Add", ["x", "c2"])], [3, 4],
     inits=[const("four", np.array([4], np.int64))])
case("embedding_int64", [node("Gather", ["table", "x"], axis=0)], [5], inits=[const("table", w(10, 3))],
     in_type=TensorProto.INT64, data=rng.integers(0, 10, size=(2, 5)).astype(np.float32), grad=False)
case("embedding_int32", [node("Gather", ["table", "x"], ["y0"], axis=0), node("ReduceMean", ["y0"], ["y"], axes=[1])],
     [4], out_name="y", inits=[const("table", w(7, 3))], in_type=TensorProto.INT32,
     data=rng.integers(-7, 7, size=(2, 4)).astype(np.float32), grad=False)

# A residual block (a graph, not a chain): the input fans out to a convolution branch and
# the skip connection; five inputs for the query tests.
case("residual_block", [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
                        node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), node("Add", ["c2", "x"], ["s"]),
                        node("Relu", ["s"], ["r2"]), node("GlobalAveragePool", ["r2"], ["g"]),
                        node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1)],
     [2, 4, 4], out_name="logits",
     inits=[const("w1", w(2, 2, 3, 3)), const("b1", w(2)), const("w2", w(2, 2, 3, 3)), const("w3", w(3, 2, scale=2.0)),
            const("b3", w(3))])
np.save(os.path.join(OUT, "residual_x.npy"), rng.uniform(0, 1, size=(5, 2, 4, 4)).astype(np.float32))

# A model with an operator the engine does not translate (not run through onnxruntime).
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
graph = helper.make_graph([node("Relu", ["x"], ["r"]), node("Hardmax", ["r"], ["h"]), node("Relu", ["h"])],
                          "unsupported", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, os.path.join(OUT, "unsupported_hardmax.onnx"))

# --- operators of real exports (appended: the cases above keep their random draws) ---
case("split_sizes", [node("Split", ["x", "sp"], ["a", "b"], axis=1), node("Mul", ["b", "b"], ["bb"]),
                     node("Concat", ["bb", "a"], ["y"], axis=1)], [5, 3], inits=[const("sp", np.array([2, 3], np.int64))])
case("split_num_outputs", [node("Split", ["x"], ["a", "b"], axis=-1, num_outputs=2), node("Add", ["a", "b"])],
     [3, 4], opset=18)
case("prelu_channels", [node("PRelu", ["x", "slope"])], [3, 2, 2], inits=[const("slope", w(3, 1, 1))])
case("elu_selu_softplus", [node("Elu", ["x"], ["e"], alpha=0.7), node("Selu", ["e"], ["s"]),
                           node("Softplus", ["s"], ["y"])], [6])
case("tile", [node("Tile", ["x", "r"])], [2, 3], inits=[const("r", np.array([1, 2, 3], np.int64))])
case("reduce_l2", [node("ReduceL2", ["x"], axes=[2], keepdims=1)], [3, 4], low=0.2, high=2.0)
case("instance_norm", [node("InstanceNormalization", ["x", "g", "b"], epsilon=1e-5)], [3, 4, 5],
     inits=[const("g", w(3)), const("b", w(3))])
case("resize_nearest_asymmetric", [node("Resize", ["x", "", "sc"], mode="nearest",
                                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
     [2, 3, 3], inits=[const("sc", np.array([1, 1, 2, 2], np.float32))])
case("resize_nearest_half_pixel", [node("Resize", ["x", "", "sc"], mode="nearest")], [2, 4, 6],
     inits=[const("sc", np.array([1, 1, 1.5, 0.5], np.float32))], opset=18)
case("resize_sizes_from_shape", [node("Shape", ["x"], ["s"]), node("Slice", ["s", "zero", "two"], ["nc"]),
                                 node("Concat", ["nc", "hw"], ["sz"], axis=0),
                                 node("Resize", ["x", "", "", "sz"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
     [2, 3, 2], inits=[const("zero", np.array([0], np.int64)), const("two", np.array([2], np.int64)),
                       const("hw", np.array([6, 5], np.int64))])
case("conv1d_pool1d", [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 2], strides=[2]),
                       node("MaxPool", ["c"], ["m"], kernel_shape=[2], strides=[1]),
                       node("AveragePool", ["m"], ["y"], kernel_shape=[3], pads=[1, 1], count_include_pad=1)],
     [3, 9], inits=[const("w", w(4, 3, 4)), const("b", w(4))])

case("resize_linear_half_pixel", [node("Resize", ["x", "", "sc"], mode="linear")], [2, 3, 4],
     inits=[const("sc", np.array([1, 1, 2.5, 1.5], np.float32))], opset=18)
case("resize_linear_align_corners", [node("Resize", ["x", "", "sc"], mode="linear",
                                          coordinate_transformation_mode="align_corners")], [2, 4, 3],
     inits=[const("sc", np.array([1, 1, 0.75, 2], np.float32))], opset=18)
case("resize_cubic", [node("Resize", ["x", "", "sc"], mode="cubic", cubic_coeff_a=-0.75)], [1, 4, 5],
     inits=[const("sc", np.array([1, 1, 2, 1.6], np.float32))], opset=18)
case("group_norm_as_torch_exports", [node("Reshape", ["x", "s1"], ["r"]),
                                     node("InstanceNormalization", ["r", "one", "zero"], ["n"], epsilon=1e-5),
                                     node("Reshape", ["n", "s2"], ["b"]), node("Mul", ["b", "g"], ["m"]),
                                     node("Add", ["m", "bias"])], [4, 3, 3],
     inits=[const("s1", np.array([0, 2, -1], np.int64)), const("one", np.ones(2, np.float32)),
            const("zero", np.zeros(2, np.float32)), const("s2", np.array([0, 4, 3, 3], np.int64)),
            const("g", w(4, 1, 1)), const("bias", w(4, 1, 1))])
case("group_normalization_op", [node("GroupNormalization", ["x", "g", "b"], num_groups=2, epsilon=1e-5)],
     [4, 3, 3], inits=[const("g", w(4)), const("b", w(4))], opset=21)

case("einsum_attention", [node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
                          node("Einsum", ["x", "t"], ["s"], equation="bhid,bhdj->bhij"),
                          node("Einsum", ["s", "x"], ["y"], equation="bhij,bhjd->bhid")], [2, 3, 4], opset=18)
case("einsum_permuted_output", [node("Einsum", ["x", "x"], ["y"], equation="bij,bkj->bki")], [3, 4], opset=18)

case("lppool", [node("LpPool", ["x"], kernel_shape=[2, 3], strides=[2, 1], pads=[0, 1, 0, 1], p=2)],
     [2, 4, 5])
case("lppool_p3_1d", [node("LpPool", ["x"], kernel_shape=[3], p=3)], [2, 6])

# A model of two inputs the second of which cannot be derived from the first (refused).
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
graph = helper.make_graph([node("Add", ["x", "other"])], "two_inputs", [x, other], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, os.path.join(OUT, "two_inputs.onnx"))

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(cases, f, indent=0, sort_keys=True)
print(len(cases), "cases")
