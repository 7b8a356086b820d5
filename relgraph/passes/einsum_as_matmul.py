"""Write an Einsum of an activation and a constant as Transpose → Reshape → MatMul → Reshape → Transpose.

    z = einsum(x, W)  is linear in x:  z[M, B, N] = Σ_K x[M, B, K] · W[B, K, N]

with the labels of x sorted into M (in x and the output only: the batch, spatial positions), B (in x, W and the
output: heads, groups), K (in x and W only: contracted) and N (in W and the output only). x is moved to
[M…, B…, 1, ∏K] (the 1 only when there are B labels) and multiplied by the constant W' = W as [B…, ∏K, ∏N],
which MatMul broadcasts over M; the product is reshaped to [M…, B…, N…] and moved to the output's order.
Labels of x alone that the output drops are summed first (ReduceSum); W's are summed at compile time. The
MatMul with a constant then carries every rule of a layer with weights (ε, z⁺, γ, αβ, flat, …), exactly.

torch's export writes ``torch.einsum`` as Einsum (a per-head projection ``"bhnd,hde->bhne"``, a 1×1 conv as
``"nchw,oc->nohw"``); tf2onnx writes ``tf.einsum`` and Keras's ``EinsumDense`` so.

Skipped: no operand or both constant, a label repeated within an operand (a diagonal) or in the output, an
ellipsis that stands for different dimensions in the two operands, a dynamic axis (the batch) contracted,
summed or shared with W, sizes of a shared label that differ (an ellipsis broadcast included).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import NodeRewritePass
from .match import Emitter
from ..graph import attr, const_array, dims


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The operands' label strings and the output's, an ellipsis spelled out as fresh upper-case labels
    (aligned from the right, as numpy broadcasts them); the implicit output is numpy's, the labels seen once,
    sorted, after the ellipsis."""
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operands in the equation, {len(ranks)} inputs")
    fresh = iter(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation)
    widest = max(r - len(t.replace("...", "")) for t, r in zip(terms, ranks))
    ellipsis = "".join(next(fresh) for _ in range(max(widest, 0)))
    spelled = []
    for t, r in zip(terms, ranks):
        n = r - len(t.replace("...", ""))
        spelled.append(t.replace("...", ellipsis[len(ellipsis) - n:] if n else ""))
    if arrow:
        out = out.replace("...", ellipsis)
    else:
        letters = "".join(t.replace("...", "") for t in terms)
        out = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return spelled, out


class EinsumAsMatMulPass(NodeRewritePass):
    op_types = ("Einsum",)

    def rewrite(self, graph: ir.Graph, node: ir.Node, opset: int) -> str | None:
        constant = [const_array(v) is not None for v in node.inputs]
        if len(node.inputs) != 2 or sum(constant) != 1:
            return "it is not a product of one activation and one constant"
        w_index = constant.index(True)
        x, w = node.inputs[1 - w_index], const_array(node.inputs[w_index]).astype(np.float32)
        if x.shape is None:
            return "the rank of its activation is unknown"
        try:
            terms, out = parse_equation(attr(node, "equation"), [len(v.shape) for v in node.inputs])
        except ValueError as exc:
            return str(exc)
        a, b = terms[1 - w_index], terms[w_index]
        if any(len(set(t)) != len(t) for t in (a, b, out)):
            return "a label repeats within an operand or the output (a diagonal)"
        if not set(out) <= set(a) | set(b):
            return "the output has a label of no operand"
        x_dims = dict(zip(a, dims(x)))
        w_dims = dict(zip(b, w.shape))
        M = [c for c in a if c in out and c not in b]
        B = [c for c in a if c in out and c in b]
        K = [c for c in a if c not in out and c in b]
        summed_x = [c for c in a if c not in out and c not in b]
        N = [c for c in b if c in out and c not in a]
        summed_w = [c for c in b if c not in out and c not in a]
        if any(x_dims[c] is None and c not in M for c in a):
            return "a dynamic axis of its activation (the batch) is contracted, summed or shared with the constant"
        if any(x_dims[c] != w_dims[c] for c in B + K):
            return "the sizes of a shared label differ between the operands"

        emit = Emitter(graph, node)
        shape = [x.shape[i] for i in range(len(a))]

        def shaped(v, labels, extra=()):
            v.shape = ir.Shape([shape[a.index(c)] if c in a else int(w_dims[c]) for c in labels] + list(extra))
            return v

        labels = [c for c in a if c not in summed_x]
        if summed_x:
            x = shaped(emit("ReduceSum", x, emit.constant(np.array([a.index(c) for c in summed_x], np.int64)),
                            keepdims=0), labels)
        order = M + B + K
        if labels != order:
            x = shaped(emit("Transpose", x, perm=[labels.index(c) for c in order]), order)
        k, n = int(np.prod([w_dims[c] for c in K])), int(np.prod([w_dims[c] for c in N]))
        if B or len(K) != 1:
            target = [0] * (len(M) + len(B)) + ([1] if B else []) + [k]
            x = shaped(emit("Reshape", x, emit.constant(np.array(target, np.int64))), M + B, [1] * bool(B) + [k])
        if summed_w:
            w = w.sum(axis=tuple(b.index(c) for c in summed_w))
            b = "".join(c for c in b if c not in summed_w)
        weight = np.ascontiguousarray(np.transpose(w, [b.index(c) for c in B + K + N]).reshape(
            [w_dims[c] for c in B] + [k, n]))
        z = shaped(emit("MatMul", x, emit.constant(weight)), M + B, [1] * bool(B) + [n])
        if B or len(N) != 1:
            z = shaped(emit("Reshape", z, emit.constant(np.array([0] * (len(M) + len(B)) + [w_dims[c] for c in N],
                                                                  np.int64))), M + B + N)
        if M + B + N != list(out):
            z = emit("Transpose", z, perm=[(M + B + N).index(c) for c in out])
        emit.replace(node.outputs[0], z)
        graph.remove(node, safe=True)
        return None
