"""The output of ``explain-dataset``: a Parquet dataset, one file per input block, and its manifest.

``OUT/part-000042.parquet`` holds block 42's explained samples, columns

| column | type |
|---|---|
| ``id`` | string, ``"<source>:<row>"`` |
| ``source``, ``row`` | the file it came from and the row in it |
| ``target`` | int64, the explained class |
| ``logits`` | fixed-shape tensor [classes] (float32) |
| ``relevance`` | fixed-shape tensor [C, H, W] or [C, h, w] with ``--store-size hxw`` (float32) |
| ``bias_relevance`` | float32 |

and, in its schema metadata, the samples of the block that could not be read (``relgraph.failed``, each
``[id, message]``) and where the block was explained (``relgraph.device``, e.g. "CPU", "CUDA" or
"CUDA, Triton kernels"). A block file is written to a hidden temporary name and renamed into place, so a file
that exists is complete: a rerun skips it, and a retried task that writes it again writes the same bytes
under the same name (no duplicates). ``OUT/_manifest.json`` records what the run computes (explainer,
data, blocks, options); a rerun with the same manifest resumes, anything else needs ``--force``.
``OUT/_summary.json`` is written at the end. pyarrow and ``ray.data.read_parquet`` skip ``_`` and ``.``
files, so the folder reads as one table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid

import numpy as np

from ..errors import RelgraphError

MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"
FAILED_KEY = b"relgraph.failed"
DEVICE_KEY = b"relgraph.device"
FORMAT = 1
_PART = re.compile(r"^part-(\d{6})\.parquet$")


def part_name(block: int) -> str:
    return f"part-{block:06d}.parquet"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finished_blocks(out: str) -> set[int]:
    return {int(m.group(1)) for m in map(_PART.match, os.listdir(out)) if m} if os.path.isdir(out) else set()


def prepare(out: str, manifest: dict, *, force: bool) -> set[int]:
    """Make ``out`` ready for ``manifest``'s run; return the blocks already written (to skip).

    A new or empty folder starts the run. A folder holding this same run (same manifest) resumes it. A
    folder holding another run is replaced only with ``force``; a folder that is not an explain-dataset
    output is never touched.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise RelgraphError(f"output exists and is not a folder: {out}")
    entries = os.listdir(out) if os.path.isdir(out) else []
    if entries and MANIFEST not in entries:
        raise RelgraphError(f"{out} is not empty and holds no explain-dataset output; choose a new folder")
    if entries:
        with open(os.path.join(out, MANIFEST)) as f:
            previous = json.load(f)
        if previous == manifest and not force:
            for name in entries:  # what an interrupted run left half-written
                if name.startswith(".part-") and name.endswith(".tmp"):
                    os.remove(os.path.join(out, name))
            return finished_blocks(out)
        if not force:
            changed = [k for k in manifest if previous.get(k) != manifest[k]]
            raise RelgraphError(f"{out} holds the output of another run (it differs in {', '.join(changed)}); "
                                "pass --force to replace it")
        for name in entries:  # only what a run writes
            if _PART.match(name) or name in (MANIFEST, SUMMARY) or name.startswith(".part-"):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, MANIFEST), manifest)
    return set()


def _write_json(path: str, value) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def block_table(ids, sources, rows, targets, logits, relevance, bias, failed, device: str = ""):
    """One block's explained samples as an Arrow table, its failed samples and device in the schema metadata."""
    import pyarrow as pa

    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "source": pa.array(sources, pa.string()),
        "row": pa.array(rows, pa.int64()),
        "target": pa.array(targets, pa.int64()),
        "logits": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(logits, np.float32)),
        "relevance": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(relevance, np.float32)),
        "bias_relevance": pa.array(np.asarray(bias, np.float32), pa.float32()),
    })
    return table.replace_schema_metadata({FAILED_KEY: json.dumps(failed).encode(), DEVICE_KEY: device.encode()})


def write_block(out: str, block: int, table) -> None:
    """Write atomically: a hidden temporary file renamed into place (a rename within a folder is atomic)."""
    import pyarrow.parquet as pq

    tmp = os.path.join(out, f".{part_name(block)}.{uuid.uuid4().hex}.tmp")
    # only the source repeats: dictionary-encoding the unique ids and the float tensors is work thrown away
    # (a third of the write's time)
    pq.write_table(table, tmp, use_dictionary=["source"])
    os.replace(tmp, os.path.join(out, part_name(block)))


def summarize(out: str, manifest: dict, computed: int, seconds: float) -> dict:
    """Count the samples over every block file, collect the failed ones, write ``_summary.json``."""
    import pyarrow.parquet as pq

    done = finished_blocks(out)
    explained, failed, devices = 0, [], {}
    for block in sorted(done):
        path = os.path.join(out, part_name(block))
        meta = pq.read_metadata(path)
        explained += meta.num_rows
        failed += json.loads((meta.metadata or {}).get(FAILED_KEY, b"[]"))
        device = (meta.metadata or {}).get(DEVICE_KEY, b"").decode() or "unknown"
        devices[device] = devices.get(device, 0) + 1
    summary = {"samples": explained + len(failed), "explained": explained, "failed": len(failed),
               "failures": [{"id": i, "error": e} for i, e in failed], "blocks": len(manifest["blocks"]),
               "blocks_written": len(done), "blocks_computed": computed, "devices": devices,
               "seconds": round(seconds, 3)}
    _write_json(os.path.join(out, SUMMARY), summary)
    return summary


def read_output(out: str, columns=None):
    """The explain-dataset output in ``out`` as one Arrow table (pyarrow only; no Ray needed)."""
    import pyarrow.parquet as pq

    if not os.path.isdir(out):
        raise RelgraphError(f"explain-dataset output not found: {out}")
    if not finished_blocks(out):
        raise RelgraphError(f"{out} holds no explained blocks (part-*.parquet)")
    try:
        return pq.read_table(out, columns=columns)
    except Exception as exc:
        raise RelgraphError(f"cannot read {out} as Parquet: {str(exc).splitlines()[0]}") from None


def tensor(column) -> np.ndarray:
    """A fixed-shape tensor column as one numpy array [N, ...]."""
    return column.combine_chunks().to_numpy_ndarray()
