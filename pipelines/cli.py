"""The `samdata` command line."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
samdata: the data engine for the Segment Anything family.

Reads image corpora (SA-1B tar shards, WebDataset tars, image folders; local or s3://)
and writes Parquet datasets with Ray Data: SAM teacher image embeddings for distillation
(`embed`) and, later, everything-mode auto-labels.
"""


def _cmd_models(args: argparse.Namespace) -> int:
    from models.registry import MODEL_REGISTRY, OFFICIAL_CHECKPOINTS

    for name in MODEL_REGISTRY:
        print(f"{name:24s} {OFFICIAL_CHECKPOINTS.get(name, '(test config, no official file)')}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    import numpy as np

    from models import Predictor, build_model

    model = build_model(args.model, checkpoint=args.checkpoint, sha256=args.sha256,
                        seed=None if args.checkpoint else 0)
    if model.checkpoint_sha256 is None:
        print("WARNING: RANDOM WEIGHTS (no --checkpoint given): the numbers mean nothing.",
              file=sys.stderr)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    predictor = Predictor(model)
    emb = predictor.embed([image])
    out = predictor.predict(emb[0], image.shape[:2], point_coords=[[320, 240]], point_labels=[1])
    print(json.dumps({
        "model": args.model,
        "checkpoint_sha256": model.checkpoint_sha256,
        "embedding_shape": list(emb.shape),
        "masks_shape": list(out["masks"].shape),
        "iou_predictions": [round(v, 4) for v in out["iou_predictions"][0].tolist()],
    }))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samdata", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registry's models and their official files")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "smoke",
        help="build a model, embed one synthetic image and prompt it (no Ray)",
        description="Build a registry model (random weights unless --checkpoint), embed one "
        "640x480 synthetic image and decode one point prompt; print the shapes as JSON.",
    )
    p.add_argument("--model", default="sam_tiny", help="registry name (see `samdata models`)")
    p.add_argument("--checkpoint", help="official checkpoint file: local path or fsspec URL")
    p.add_argument("--sha256", help="expected sha256 of the checkpoint file")
    p.set_defaults(func=_cmd_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
