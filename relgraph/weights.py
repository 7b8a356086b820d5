"""Weights from load to save: arrays in the IR, skeletons in every proto.

A model's weights are most of its bytes, and protobuf copies a tensor's bytes on every read of ``raw_data``
(VGG-16's 411 MB classifier weight costs 0.7 s per read). So each weight is decoded once, when the model is
loaded, into an array the IR holds (a memory map for external data: no copy at all), and every proto relgraph
builds on the way (the checker's, ONNX shape inference's, the inliner's) is a *skeleton*: its initializers are
marked as external data at a placeholder location, which no ONNX tool reads. The explainer's weights go back
into the proto, or beside it as external data past protobuf's 2 GiB limit, only when it is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

ASIDE = "relgraph-weights-aside"  # the external-data location of a weight while it is set aside
INLINE_LIMIT = 1_800_000_000      # bytes of weights past which the explainer keeps them in PATH.data
SMALL = 4096                      # bytes: a tensor this small stays in every skeleton (shapes, scalars)


def expected_bytes(tensor: onnx.TensorProto) -> int:
    """What a tensor's raw data must hold, from its shape and element type (4-bit types pack two a byte)."""
    count = int(np.prod(tensor.dims, dtype=np.int64))
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except ValueError:
        raise ValueError(f"tensor '{tensor.name}' has an unknown element type {tensor.data_type}") from None
    return (count * bits + 7) // 8


def _mark_aside(tensor: onnx.TensorProto, length: int) -> None:
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", ASIDE), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _external_entry(tensor: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def take_weights(proto: onnx.ModelProto, folder: Path) -> dict[str, ir.TensorProtocol]:
    """Every graph initializer's data, taken out of ``proto`` (which keeps a skeleton): inline raw data as an
    array, decoded once; external data as a memory map of its file in ``folder``.

    Raises ``ValueError`` naming the tensor whose data does not hold what its shape and type declare.
    """
    taken = {}
    for tensor in proto.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        expected = expected_bytes(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = _external_entry(tensor)
            offset, length = int(entry.get("offset", 0)), int(entry.get("length", expected))
            path = folder / entry["location"]
            if length != expected or os.path.getsize(path) < offset + length:
                raise ValueError(f"tensor '{tensor.name}' declares {expected} bytes; its external data holds "
                                 f"{min(length, max(0, os.path.getsize(path) - offset))}")
            mapped = ir.ExternalTensor(entry["location"], offset, length, ir.DataType(tensor.data_type),
                                       shape=ir.Shape(tensor.dims), name=tensor.name, base_dir=str(folder))
            # a small one is read: it may be a shape, and the skeletons keep small constants for shape inference
            taken[tensor.name] = mapped if length > SMALL else ir.Tensor(mapped.numpy().copy(), dtype=mapped.dtype,
                                                                         name=tensor.name)
        elif tensor.HasField("raw_data"):
            raw = tensor.raw_data  # the one read of the bytes
            if len(raw) != expected:
                raise ValueError(f"tensor '{tensor.name}' holds {len(raw)} bytes, its shape {list(tensor.dims)} "
                                 f"and type declare {expected}")
            dtype = ir.DataType(tensor.data_type)
            if dtype.bitwidth < 8:  # packed: onnx_ir unpacks them
                array = ir.serde.TensorProtoTensor(tensor).numpy()
            else:
                array = np.frombuffer(raw, dtype=dtype.numpy().newbyteorder("<")).reshape(tuple(tensor.dims))
            taken[tensor.name] = ir.Tensor(array, dtype=dtype, name=tensor.name)
            tensor.ClearField("raw_data")
        else:
            continue
        _mark_aside(tensor, expected)
    return taken


def put_weights(model: ir.Model, weights: dict[str, ir.TensorProtocol]) -> None:
    """Give the initializers of a model read from a skeleton their data back."""
    for name, tensor in weights.items():
        model.graph.initializers[name].const_value = tensor


def skeleton_proto(model: ir.Model, threshold: int = SMALL) -> tuple[onnx.ModelProto, dict]:
    """``model`` serialized with every initializer above ``threshold`` bytes set aside, and those tensors by name.

    Small tensors stay: shape inference reads the constants that compute shapes.
    """
    aside = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.dtype != ir.DataType.STRING and tensor.nbytes > threshold:
            aside[value.name] = tensor
            value.const_value = ir.ExternalTensor(ASIDE, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                                  name=value.name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        put_weights(model, aside)
    return proto, aside


def restore_weights(proto: onnx.ModelProto, aside: dict) -> None:
    """Put the weights set aside back into ``proto``'s initializers, inline."""
    for tensor in proto.graph.initializer:
        if tensor.name in aside:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = aside[tensor.name].tobytes()


def total_bytes(aside: dict) -> int:
    return sum(t.nbytes for t in aside.values())


def write_external(proto: onnx.ModelProto, aside: dict, folder: str, location: str) -> None:
    """Write the weights set aside to ``folder/location`` (staged, then moved into place) and point ``proto``'s
    initializers at them, one tensor in memory at a time."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{location}.") as staging:
        offsets = {}
        with open(os.path.join(staging, location), "wb") as f:
            for name, tensor in aside.items():
                f.seek(-f.tell() % 4096, os.SEEK_CUR)  # page-aligned, so runtimes can map each tensor
                offsets[name] = (f.tell(), tensor.nbytes)
                f.write(tensor.tobytes())
        os.replace(os.path.join(staging, location), os.path.join(folder, location))
    for tensor in proto.graph.initializer:
        if tensor.name in offsets:
            offset, length = offsets[tensor.name]
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_length: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(payload_length)


_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9  # field numbers in onnx.proto


def write_inline(skeleton: onnx.ModelProto, aside: dict, file) -> None:
    """Write the model ``skeleton`` with the weights ``aside`` inline, straight from their arrays.

    Protobuf merges a message field that occurs more than once, so the file is the skeleton without those
    initializers, followed by one ``graph { initializer { … raw_data } }`` record per weight: every parser reads
    it as the one model, and no proto ever holds the weights' bytes (serializing them cost VGG-16 3 s and a
    copy of every weight).
    """
    head = onnx.ModelProto()
    head.CopyFrom(skeleton)
    records = []
    initializers = head.graph.initializer
    for i in reversed(range(len(initializers))):
        tensor = initializers[i]
        if tensor.name in aside:
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            records.append((tensor.SerializeToString(), aside[tensor.name]))
            del initializers[i]
    records.reverse()
    file.write(head.SerializeToString())
    for meta, tensor in records:
        data = _raw_bytes(tensor)
        tensor_length = len(meta) + len(_field(_TENSOR_RAW_DATA, data.nbytes)) + data.nbytes
        graph_length = len(_field(_GRAPH_INITIALIZER, tensor_length)) + tensor_length
        file.write(_field(_MODEL_GRAPH, graph_length) + _field(_GRAPH_INITIALIZER, tensor_length) + meta
                   + _field(_TENSOR_RAW_DATA, data.nbytes))
        file.write(data)


def _raw_bytes(tensor: ir.TensorProtocol) -> memoryview:
    """A tensor's little-endian bytes, without a copy where its array already is one."""
    if tensor.dtype.bitwidth < 8:
        return memoryview(tensor.tobytes())
    array = tensor.numpy()
    if array.dtype.byteorder == ">":
        array = array.byteswap().view(array.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def check_skeleton(proto: onnx.ModelProto, full_check: bool = True) -> None:
    """``onnx.checker.check_model`` of a skeleton: the checker insists on a regular file at each external
    location, so it reads the model from a folder with an empty one."""
    with tempfile.TemporaryDirectory(prefix="relgraph-check-") as folder:
        open(os.path.join(folder, ASIDE), "wb").close()
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(proto, path)
        onnx.checker.check_model(path, full_check=full_check)
