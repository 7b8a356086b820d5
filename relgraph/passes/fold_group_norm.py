"""Write InstanceNormalization and GroupNormalization, and torch's GroupNorm, as one LayerNormalization.

With x of shape [N, C, S…], G groups of C/G consecutive channels, γ and β per channel:

    GroupNorm(x) = Reshape(LayerNorm(Reshape(x, [N, G, C/G, ΠS]), axis 2, γ [G, C/G, 1], β [G, C/G, 1]), [N, C, S…])
    InstanceNorm(x) = LayerNorm(x, axis 2, γ [C, 1, …], β [C, 1, …])       (G = C: no reshape)
    GroupNorm with G = 1 = LayerNorm(x, axis 1, γ [C, 1, …], β [C, 1, …])

LayerNormalization broadcasts γ and β to x (unidirectionally), so one op carries every group size with the
affine map per channel, at every opset from 17 (GroupNormalization's per-channel γ needs opset 21, and its
opset-18 form, γ per group, is deprecated: onnx's checker refuses it); the rules of
:mod:`relgraph.rules.normalization` then serve all three.

Spellings: torch's legacy and dynamo exports write ``nn.GroupNorm`` as Reshape(x, [0, G, −1]) →
InstanceNormalization(scale 1, bias 0, per group) → Reshape(back to x's shape) → Mul γ → Add β (PoolFormer,
timm's GroupNorm1); exporters targeting opset 18–20 write GroupNormalization with γ, β per group, and at
opset ≥ 21 per channel; ``nn.InstanceNorm*d`` and Keras/tf2onnx write InstanceNormalization. The Mul and Add
after the reshape back are taken into γ and β when they are by constants that vary along the channels only
and the value between has no other consumer; without them, the constants would be a scale layer and a bias
of their own, each with its own stabilizer, and the relevance would differ from the op's.

Skipped (the node stays, named in ``skipped``): scale or bias not constant, non-batch dimensions not static,
a channel count the groups do not divide, a scale or bias whose size fits neither the groups nor the channels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import NodeRewritePass
from .match import STANDARD, Emitter
from ..graph import attr, const_array, dims


class FoldGroupNormPass(NodeRewritePass):
    op_types = ("InstanceNormalization", "GroupNormalization")

    def rewrite(self, graph: ir.Graph, node: ir.Node, opset: int) -> str | None:
        x = node.inputs[0]
        if x.shape is None or len(x.shape) < 2 or None in dims(x)[1:]:
            return "the non-batch dimensions of its input are not static"
        scale, bias = (const_array(v) for v in (list(node.inputs[1:]) + [None, None])[:2])
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
            return "scale or bias is not constant"
        bias = np.zeros_like(scale) if bias is None else bias
        epsilon = float(attr(node, "epsilon", 1e-5))
        if node.op_type == "InstanceNormalization":
            chain = _torch_group_norm(node, scale, bias)
            if chain is not None:
                return _emit(graph, *chain, epsilon)
            if len(x.shape) < 3:
                return "its input has no spatial axes"
            channels = dims(x)[1]
            if scale.size != channels or bias.size != channels:
                return f"scale or bias has not one value per channel ({channels})"
            return _emit(graph, x, node.outputs[0], channels, scale.reshape(-1), bias.reshape(-1), epsilon)
        groups, channels = int(attr(node, "num_groups", 0)), dims(x)[1]
        if groups <= 0 or channels % groups:
            return f"{channels} channels do not split into {groups} groups"
        # opset 18–20: γ and β per group; opset 21: per channel
        size = channels if opset >= 21 else groups
        if scale.size != size or bias.size != size:
            return f"scale or bias has not {size} values (opset {opset})"
        per_channel = channels // size
        return _emit(graph, x, node.outputs[0], groups, np.repeat(scale.reshape(-1), per_channel),
                     np.repeat(bias.reshape(-1), per_channel), epsilon)


def _torch_group_norm(node: ir.Node, scale: np.ndarray, bias: np.ndarray):
    """(x, the value it replaces, G, γ, β) when ``node`` (an InstanceNormalization over [N, G, K]) sits in
    Reshape(x → [N, G, K]) → node → Reshape(→ x's shape) → [Mul by γ] → [Add β]; None otherwise.

    The instance norm's own scale s and bias b are per group: y = γ ⊙ (s ⊙ x̂ + b) + β per channel, so
    γ' = γ ⊙ s and β' = γ ⊙ b + β. Mul, Div, Add and Sub by constants that vary along the channels only are
    taken in, in any number, while the value between has one consumer and is not a graph output."""
    inner, into = node.inputs[0], node.inputs[0].producer()
    out = node.outputs[0]
    if into is None or into.op_type != "Reshape" or into.domain not in STANDARD or inner.shape is None \
            or len(inner.shape) != 3 or len(inner.uses()) != 1 or len(out.uses()) != 1 or out.is_graph_output():
        return None
    x, back = into.inputs[0], out.uses()[0].node
    if back.op_type != "Reshape" or back.domain not in STANDARD or x.shape is None or len(x.shape) < 2:
        return None
    shape, groups, size = dims(x), dims(inner)[1], dims(inner)[2]
    y = back.outputs[0]
    if None in shape[1:] or groups is None or size is None or y.shape is None or dims(y)[1:] != shape[1:]:
        return None
    channels = shape[1]
    if channels % groups or groups * size != int(np.prod(shape[1:])) or scale.size != groups \
            or bias.size != groups:
        return None
    gamma = np.repeat(scale.reshape(-1), channels // groups).astype(np.float64)
    beta = np.repeat(bias.reshape(-1), channels // groups).astype(np.float64)
    while len(y.uses()) == 1 and not y.is_graph_output():
        step = _per_channel_step(y.uses()[0].node, y, len(shape))
        if step is None:
            break
        op, k = step
        if op in ("Mul", "Div"):
            k = k if op == "Mul" else 1.0 / k
            gamma, beta = gamma * k, beta * k
        else:
            beta = beta + (k if op == "Add" else -k)
        y = y.uses()[0].node.outputs[0]
    return x, y, groups, gamma, beta


def _per_channel_step(user: ir.Node, v: ir.Value, rank_: int):
    """(op, c per channel) when ``user`` is v·c, v/c, v + c, c + v or v − c with c constant along every
    axis but the channels (axis 1), else None."""
    if user.domain not in STANDARD or user.op_type not in ("Mul", "Div", "Add", "Sub") or len(user.inputs) != 2:
        return None
    a, b = user.inputs
    if a is v and b is not v:
        c = const_array(b)
    elif b is v and user.op_type in ("Mul", "Add"):
        c = const_array(a)
    else:
        return None
    if c is None or c.dtype.kind != "f" or c.ndim > rank_:
        return None
    c = c.reshape((1,) * (rank_ - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(c.shape) if i != 1) or (user.op_type == "Div" and np.any(c == 0)):
        return None
    return user.op_type, c.reshape(-1).astype(np.float64)


def _emit(graph: ir.Graph, x: ir.Value, old: ir.Value, groups: int, gamma: np.ndarray, beta: np.ndarray,
          epsilon: float) -> None:
    """Replace ``old`` by the LayerNormalization form (module docstring) of the group norm of x."""
    shape = dims(x)
    channels, spatial = shape[1], int(np.prod(shape[2:]))
    trailing = (1,) * (len(shape) - 2)
    gamma, beta = np.broadcast_to(gamma, channels), np.broadcast_to(beta, channels)
    dtype = x.type.dtype.numpy() if x.type is not None else np.float32
    emit = Emitter(graph, old.producer())
    if groups == channels and len(shape) > 2:
        axis, view, param = 2, x, (channels,) + trailing
    elif groups == 1:
        axis, view, param = 1, x, (channels,) + trailing
    else:  # [N, G, C/G, ΠS]: the group in the trailing axes, γ per channel along the leading two
        axis, param = 2, (groups, channels // groups, 1)
        view = emit("Reshape", x, emit.constant(np.array([-1, groups, channels // groups, spatial], np.int64)))
        view.shape = ir.Shape([x.shape[0], groups, channels // groups, spatial])
    inputs = [view, emit.constant(gamma.reshape(param).astype(dtype))]
    if np.any(beta != 0):
        inputs.append(emit.constant(beta.reshape(param).astype(dtype)))
    out = emit("LayerNormalization", *inputs, axis=axis, epsilon=epsilon)
    out.shape = view.shape
    if view is not x:
        out = emit("Reshape", out, emit.constant(np.array([-1] + shape[1:], np.int64)))
    emit.replace(old, out)
    return None
