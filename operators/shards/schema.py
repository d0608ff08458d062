"""The declared rows that cross Ray between the steps of a sharded job, and the Parquet
schemas of the tables it writes. Every step builds and reads rows through these names.

    driver  --SHARD ITEM-->  read_and_prepare (evaluate: census, read_selected, read_annotations)
    read_and_prepare  --PREPARED-->  model actor  --PREPARED + job outputs-->  write_batch
    write_batch  --TALLY-->  driver (commits a shard once its tallies add up to its end row)

A shard's samples are followed by one end row per piece (`is_end` True; one piece unless the
shard was cut, see pieces.py) carrying the piece's sample count and, when the tar broke off,
why (`shard_error`: the shard is committed with it) or why it could not be read
(`shard_unavailable`: storage failed; the shard is left uncommitted).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from .listing import Shard

# -- driver -> read -----------------------------------------------------------------------------

# The item of one shard that the driver hands a read task, and its optional fields
SHARD_ITEM_OPTIONAL: dict[str, str] = {
    "skip_keys": "sharded jobs: keys an earlier run already wrote (read past, no row)",
    "keys": "evaluate: the sampled keys to read (None: every sample)",
    "piece": "sharded jobs: the part of the shard to read (piece.Piece as a dict; absent: all)",
}


def shard_item(shard: Shard, **extra: Any) -> dict[str, Any]:
    """The Ray Data item of `shard`: {"shard", "url", "container"} plus optional fields of
    SHARD_ITEM_OPTIONAL (unknown names refused)."""
    unknown = set(extra) - set(SHARD_ITEM_OPTIONAL)
    if unknown:
        raise KeyError(f"expected optional shard-item fields {sorted(SHARD_ITEM_OPTIONAL)}, "
                       f"got unknown {sorted(unknown)}")
    return {"shard": shard.name, "url": shard.url, "container": shard.container, **extra}


def item_shard(item: dict[str, Any]) -> Shard:
    """The Shard of a shard item (see shard_item)."""
    return Shard(name=item["shard"], url=item["url"], container=item["container"])


# -- read -> model actor ------------------------------------------------------------------------

# Prepared row fields and their default (the values of an end row or an error row)
PREPARED_DEFAULTS: dict[str, Any] = {
    "shard": "",  # shard name (output folder)
    "key": "",  # sample key inside the shard
    "source_uri": "",  # "{shard url}#{key}"
    "image_sha256": "",  # hex sha256 of the image member's bytes ("" when it has none)
    "image_id": -1,  # SA-1B id (json), else the last number in the key; -1: none
    "orig_hw": None,  # int32 (2,) original height, width
    "input_hw": None,  # int32 (2,) resized size the model sees
    "pixels": None,  # the model input (SxSx3) or the decoded original (HxWx3), see prepare
    "status": "ok",  # ok | error (end rows: "end")
    "error": "",  # why the sample cannot be used
    "image_jpeg": b"",  # optional: the resized input as JPEG
    "encoded": b"",  # input.decode device: the image's own bytes, decoded by the model actor
    "is_end": False,  # True for the shard's end row
    "shard_count": 0,  # end row: samples the shard yielded
    "shard_error": "",  # end row: why the shard broke off ("" when whole)
    "skipped_members": 0,  # end row: tar members that were no sample
    "member_counts": "",  # end row: JSON {kind: count} of read.MEMBER_KINDS
    "shard_unavailable": "",  # end row: why the shard could not be read (not committed)
    "piece": 0,  # end row: which piece of its shard it ends (piece.Piece.index)
    "annotations_json": "",  # the sample json's `annotations` as JSON text, for jobs that
    #   ask for it (segment: SA-1B prompts; evaluate: ground truth); "" otherwise
}


def prepared_row(**values: Any) -> dict[str, Any]:
    """A prepared row: PREPARED_DEFAULTS with `values` (unknown names refused)."""
    unknown = set(values) - set(PREPARED_DEFAULTS)
    if unknown:
        raise KeyError(f"expected prepared-row fields {sorted(PREPARED_DEFAULTS)}, "
                       f"got unknown {sorted(unknown)}")
    row = dict(PREPARED_DEFAULTS)
    row["orig_hw"] = np.zeros(2, np.int32)
    row["input_hw"] = np.zeros(2, np.int32)
    row.update(values)
    return row


def usable_images(batch: dict[str, np.ndarray]) -> np.ndarray:
    """int64 indices of a batch's rows that are decoded images (not end rows, not errors)."""
    return np.flatnonzero(~batch["is_end"].astype(bool) & (batch["status"] == "ok"))


def image_rows(batch: dict[str, np.ndarray]) -> np.ndarray:
    """bool mask of a batch's sample rows (ok or error), i.e. not end rows."""
    return ~batch["is_end"].astype(bool)


# -- write -> driver ----------------------------------------------------------------------------

# One tally row per (shard, written part or end row) of a batch
TALLY_DTYPES: dict[str, type] = {
    "shard": object,
    "is_end": bool,
    "rows": np.int64,  # rows written in this part
    "ok": np.int64,
    "failed": np.int64,
    "bytes": np.int64,  # Parquet bytes written
    "part": object,  # part tally: the part file's name in the shard folder
    "masks": np.int64,  # part tally: annotations in the part (label tables; 0 for embeddings)
    "shard_count": np.int64,  # end tally: the shard's sample count
    "shard_error": object,
    "skipped_members": np.int64,
    "member_counts": object,  # end tally: JSON {kind: count} (read.MEMBER_KINDS)
    "shard_unavailable": object,  # end tally: unreadable shard; part tally: write failure
    "piece": np.int64,  # end tally: the piece of the shard it ends
}


def tally_columns(tallies: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Tally dicts (TALLY_DTYPES keys, missing ones zero/empty) -> a numpy batch."""
    blank = {"is_end": False, "rows": 0, "ok": 0, "failed": 0, "bytes": 0, "part": "",
             "masks": 0,
             "shard_count": 0, "shard_error": "", "skipped_members": 0, "member_counts": "",
             "shard_unavailable": "", "piece": 0}
    rows = [{**blank, **t} for t in tallies]
    return {k: np.array([r[k] for r in rows], dtype=dt) for k, dt in TALLY_DTYPES.items()}


# -- Parquet tables -----------------------------------------------------------------------------

HW_TYPE = pa.list_(pa.int32(), 2)

ANNOTATION_TYPE = pa.struct([
    ("id", pa.int64()),
    ("segmentation", pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])),
    ("bbox", pa.list_(pa.float64(), 4)),
    ("area", pa.int64()),
    ("predicted_iou", pa.float64()),
    ("stability_score", pa.float64()),
    ("point_coords", pa.list_(pa.list_(pa.float64(), 2))),
    ("crop_box", pa.list_(pa.float64(), 4)),
])

_IDENTITY = [
    ("image_id", pa.int64()),
    ("key", pa.string()),
    ("shard", pa.string()),
    ("source_uri", pa.string()),
]
_STATUS = [("status", pa.string()), ("error", pa.string())]
# the image member's bytes, as a hex sha256: evaluation and distillation check that they see
# the images the rows were made from (null: no image member, or a dataset older than it)
_CONTENT = [("image_sha256", pa.string())]


# `output.high_res`: a SAM 2 model's high-res feature maps, in the order its decoder takes
# them (models.protocols.HighResPromptableModel.high_res_shapes): 32x256x256 (stride 4) and
# 64x128x128 (stride 8) for the official sizes
HIGH_RES_COLUMNS = ("high_res_0", "high_res_1")


def embedding_schema(dtype: pa.DataType, shape: tuple[int, ...], include_image: bool,
                     high_res_shapes: list[tuple[int, ...]] | None = None) -> pa.Schema:
    """The embeddings table: one row per image, `embedding` a fixed_shape_tensor of `shape`;
    with `high_res_shapes` (output.high_res) also `high_res_0`, `high_res_1`, fixed_shape_
    tensors of those shapes in the same dtype (null on error rows, as `embedding`)."""
    fields = [*_IDENTITY, ("model", pa.string()), ("checkpoint_sha256", pa.string()),
              ("orig_hw", HW_TYPE), ("input_hw", HW_TYPE),
              ("embedding", pa.fixed_shape_tensor(dtype, list(shape))), *_STATUS, *_CONTENT]
    if include_image:
        fields.append(("image_jpeg", pa.binary()))
    if high_res_shapes is not None:
        if len(high_res_shapes) != len(HIGH_RES_COLUMNS):
            raise ValueError(f"expected {len(HIGH_RES_COLUMNS)} high-res shapes, got "
                             f"{len(high_res_shapes)}")
        fields += [(name, pa.fixed_shape_tensor(dtype, list(s)))
                   for name, s in zip(HIGH_RES_COLUMNS, high_res_shapes, strict=True)]
    return pa.schema(fields)


MASK_SCHEMA = pa.schema([
    *_IDENTITY,
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("model", pa.string()),
    ("checkpoint_sha256", pa.string()),
    ("settings", pa.string()),  # JSON: the generator parameters that applied
    ("annotations", pa.list_(ANNOTATION_TYPE)),
    *_STATUS,
    *_CONTENT,
])

# `samdata segment`: one result per prompt, the SA-1B fields (point_coords: the prompt's
# points) followed by the rest of the prompt and the fields it carried through
SEGMENT_ANNOTATION_TYPE = pa.struct([
    *ANNOTATION_TYPE,
    ("prompt_box", pa.list_(pa.float64(), 4)),  # XYXY original pixels; null: no box
    ("point_labels", pa.list_(pa.int32())),  # of point_coords: 1 foreground, 0 background
    ("category_id", pa.int64()),  # carried from the prompt source; null when none
    ("category", pa.string()),
    ("score", pa.float64()),  # e.g. the detector's confidence
    ("source_id", pa.int64()),  # the prompt's annotation id in its source (SA-1B, COCO)
])

SEGMENT_SCHEMA = pa.schema([
    field if field.name != "annotations" else pa.field("annotations",
                                                       pa.list_(SEGMENT_ANNOTATION_TYPE))
    for field in MASK_SCHEMA
])

# Concept labels (SAM 3: text prompts -> every instance of each concept): the SA-1B fields
# followed by the instance's category. Everything-mode labels keep MASK_SCHEMA, whose structs
# hold exactly the SA-1B fields: a reader of either takes `ann.get("category")` (None there:
# class-agnostic), so a dataset written before these columns reads as it always did.
CONCEPT_ANNOTATION_TYPE = pa.struct([
    *ANNOTATION_TYPE,
    ("category_id", pa.int64()),  # 1-based position of the concept in the job's list (stable)
    ("category", pa.string()),  # the concept name as the job was given it
    ("score", pa.float64()),  # the instance's score (what AP ranks by); null: predicted_iou
])

CONCEPT_SCHEMA = pa.schema([
    field if field.name != "annotations" else pa.field("annotations",
                                                       pa.list_(CONCEPT_ANNOTATION_TYPE))
    for field in MASK_SCHEMA
])

# A concept-label row's `settings` JSON names the job's whole concept list under this key, in
# order (category_id = position + 1), so that exports list every concept, also one no image
# has an instance of, under the same ids in every shard and rerun
CONCEPTS_SETTING = "concepts"


def settings_concepts(settings: str | None) -> list[str] | None:
    """The concept list a row's `settings` JSON declares (CONCEPTS_SETTING), or None when it
    declares none (everything mode, segment, a row without settings). ValueError when it is
    not a list of distinct non-empty strings."""
    if not settings:
        return None
    try:
        value = json.loads(settings)
    except json.JSONDecodeError as e:
        raise ValueError(f"expected a JSON object in `settings`, got {settings!r:.60}") from e
    if not isinstance(value, dict) or value.get(CONCEPTS_SETTING) is None:
        return None
    concepts = value[CONCEPTS_SETTING]
    if not isinstance(concepts, list) or not all(isinstance(c, str) and c.strip()
                                                 for c in concepts):
        raise ValueError(f"expected `settings.{CONCEPTS_SETTING}` as a list of non-empty "
                         f"names, got {concepts!r:.80}")
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"expected distinct names in `settings.{CONCEPTS_SETTING}`, got "
                         f"{concepts!r:.80}")
    return list(concepts)
