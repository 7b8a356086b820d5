"""Write the gated activations that have an op of their own as the product of x and their gate.

    Gelu(x)                  = x · ½(1 + erf(x/√2))                        (opset 20, approximate="none")
    Gelu(x, approximate=tanh) = x · ½(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    Swish(x; α)              = x · σ(α·x)                                  (opset 24; SiLU at α = 1)
    Mish(x)                  = x · tanh(softplus(x))                       (opset 18)

Exporters that target opset ≥ 20 may write the Gelu op, ≥ 24 the Swish op, and the torch dynamo export
(onnxscript's torchlib) writes ``mish`` as the Mish op; the legacy torch export, tf2onnx (Keras's ``gelu``
and ``mish``) and jax2onnx write the products above; Keras's and torch's ``silu`` come as x · Sigmoid(x).
The products are the canonical form: the relevance pass recognises the gate (a product of x and an
elementwise function of x) and gives it no relevance, so the op and every written-out form get the same
relevance, and the explainer needs no opset-18, -20 or -24 op.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from .base import ReportingPass
from .match import STANDARD, Emitter
from ..graph import attr


def _gelu_gate(emit: Emitter, x: ir.Value, approximate: str) -> ir.Value:
    if approximate == "tanh":
        cube = emit("Pow", x, emit.scalar(3.0))
        inner = emit("Add", x, emit("Mul", cube, emit.scalar(0.044715)))
        t = emit("Tanh", emit("Mul", inner, emit.scalar(math.sqrt(2.0 / math.pi))))
    else:
        t = emit("Erf", emit("Mul", x, emit.scalar(1.0 / math.sqrt(2.0))))
    return emit("Mul", emit("Add", t, emit.scalar(1.0)), emit.scalar(0.5))


class DecomposeGatesPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.domain not in STANDARD or node.op_type not in ("Gelu", "Swish", "Mish"):
                continue
            x, emit = node.inputs[0], Emitter(graph, node)
            if node.op_type == "Gelu":
                approximate = attr(node, "approximate", "none")
                if approximate not in ("none", "tanh"):
                    self.skipped.append(f"Gelu '{node.name}' kept: approximate='{approximate}'")
                    continue
                gate = _gelu_gate(emit, x, approximate)
            elif node.op_type == "Mish":
                gate = emit("Tanh", emit("Softplus", x))
            else:
                alpha = float(attr(node, "alpha", 1.0))
                gate = emit("Sigmoid", x if alpha == 1.0 else emit("Mul", x, emit.scalar(alpha)))
            emit.replace(node.outputs[0], emit("Mul", x, gate))
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
