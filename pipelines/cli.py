"""The `samdata` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

DESCRIPTION = """\
samdata: the data engine for the Segment Anything family.

Reads image corpora (SA-1B tar shards, WebDataset tars, image folders; local or s3://)
and writes Parquet datasets with Ray Data: SAM teacher image embeddings for distillation
(`embed`), auto-labels in the SA-1B annotation format (`autolabel`: everything mode, or
with SAM 3 every instance of the concepts you name, with categories) and prompted masks
(`segment`); trains students on Ray Train (`distill`) and measures models and
labels with the published protocols (`evaluate`). `samdata demo` runs the whole loop.
"""


def _cmd_models(args: argparse.Namespace) -> int:
    from models import ConceptModel, model_kind
    from models.registry import MODEL_REGISTRY, OFFICIAL_CHECKPOINTS, SHIPPED_CHECKPOINTS
    from operators.config import ModelConfig

    for name in MODEL_REGISTRY:
        if name in SHIPPED_CHECKPOINTS:
            what = f"(toy size; shipped: models/weights/{SHIPPED_CHECKPOINTS[name][0]})"
        elif name in OFFICIAL_CHECKPOINTS:
            what = OFFICIAL_CHECKPOINTS[name]
        elif any(t in name for t in ("tiny", "demo", "_test")):
            what = "(toy size for tests, no official file)"
        else:  # a full-size student samdata defines (e.g. mobile_sam2): distill writes its file
            what = "(a samdata student: no official file, `samdata distill` writes one)"
        if model_kind(name) is ConceptModel:  # text prompts: autolabel's concept labels only
            what += (f" + {ModelConfig.VOCABULARY_FILE} beside it; concept labels: autolabel "
                     f"with prompts.concepts" if name in OFFICIAL_CHECKPOINTS else
                     "; concept labels: autolabel with prompts.concepts")
        print(f"{name:24s} {what}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    import numpy as np

    from models import ConceptModel, OnePassModel, Predictor, build_model, model_kind

    kind = model_kind(args.model)
    if kind in (ConceptModel, OnePassModel):  # no point prompts to decode
        what = ("a concept model: it takes text; label with `samdata autolabel` and "
                "prompts.concepts" if kind is ConceptModel else
                "a one-pass model: try `samdata autolabel`")
        raise ValueError(f"--model: expected a model that takes point prompts, got "
                         f"'{args.model}' ({what})")
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


DEMO_DIR = "samdata-demo"


def _print_summary(summary) -> None:
    print(summary.text())
    print(json.dumps(summary.as_dict()))


def _cmd_make_sample(args: argparse.Namespace) -> int:
    from operators.shards.sample import write_sample_corpus

    opts = _storage(args.endpoint_url)
    paths = write_sample_corpus(args.out, shards=args.shards,
                                images_per_shard=args.images_per_shard, seed=args.seed,
                                storage_options=opts, min_side=args.min_side,
                                max_side=args.max_side, max_shapes=args.max_shapes,
                                texture=args.texture, background=args.background)
    print(f"wrote {len(paths)} SA-1B-format shards ({args.images_per_shard} images each) "
          f"to {args.out}")
    return 0


def _cmd_job(args: argparse.Namespace) -> int:
    from .config import AutolabelConfig, ConfigError, EmbedConfig, SegmentConfig, load_config

    if args.command == "embed":
        from .embed import run_embed as run
        cls = EmbedConfig
    elif args.command == "segment":
        from .segment import run_segment as run
        cls = SegmentConfig
    else:
        from .autolabel import run_autolabel as run
        cls = AutolabelConfig
    from operators.shards.lease import OutputBusy

    try:
        cfg = load_config(args.config, args.set, cls)
        summary = run(cfg, overwrite=args.overwrite)
    except (ConfigError, OutputBusy) as e:
        print(f"samdata {args.command}: {e}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0 if summary.complete else 1  # unfinished shards: a rerun finishes them


def _model_override(spec: str) -> dict:
    """--model / --reference NAME[=CHECKPOINT] -> a model section."""
    name, _, checkpoint = spec.partition("=")
    return {"name": name, "checkpoint": checkpoint or None}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import ConfigError, EvaluateConfig, load_config
    from .evaluate import run_evaluate

    sets = [f"protocol={args.protocol}"]
    if args.model:
        sets.append("models=" + json.dumps([_model_override(m) for m in args.model]))
    if args.reference:
        sets.append("reference=" + json.dumps(_model_override(args.reference)))
    if args.labels:
        bad = [spec for spec in args.labels if not all(spec.partition("=")[::2])]
        if bad:
            raise ValueError(f"--labels: expected NAME=PATH (a row name and a label dataset), "
                             f"got '{bad[0]}'")
        labels = dict(spec.partition("=")[::2] for spec in args.labels)
        sets.append("labels=" + json.dumps(labels))
    for flag, key in (("sample", "evaluation.sample"), ("seed", "evaluation.seed"),
                      ("out", "output.path")):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={json.dumps(getattr(args, flag))}")
    if args.all:
        sets.append("evaluation.all=true")
    try:
        cfg = load_config(args.config, sets + args.set, EvaluateConfig)
    except ConfigError as e:
        print(f"samdata evaluate: {e}", file=sys.stderr)
        return 2
    report = run_evaluate(cfg)
    print(report.text())
    print(json.dumps(report.as_dict()))
    return 0 if report.images else 1


def _cmd_distill(args: argparse.Namespace) -> int:
    from .config import ConfigError, DistillConfig, load_config

    try:
        cfg = load_config(args.config, args.set, DistillConfig)
    except ConfigError as e:
        print(f"samdata distill: {e}", file=sys.stderr)
        return 2
    from .distill import run_distill

    try:
        summary = run_distill(cfg)
    except (ValueError, FileNotFoundError) as e:  # the data or the pair, named; no training
        print(f"samdata distill: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    print(json.dumps(summary.as_dict()))
    return 0

def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import print_demo, run_demo

    try:
        summary = run_demo(args.out, cpus=args.cpus)
    except RuntimeError as e:
        print(f"samdata demo: {e}", file=sys.stderr)
        return 1
    print_demo(summary)
    return 0


def _storage(endpoint_url: str | None) -> dict:
    """fsspec storage options of the --endpoint-url flag (the config's `storage` section)."""
    from operators.config import StorageConfig

    return StorageConfig(endpoint_url=endpoint_url).options()


def _cmd_export(args: argparse.Namespace) -> int:
    from operators.dataset.export_filter import AnnotationFilter
    from operators.dataset.exporters import EXPORTERS, WRITES

    opts = _storage(args.endpoint_url)
    try:
        keep = AnnotationFilter(min_score=args.min_score, min_area=args.min_area,
                                top_k=args.top_k, skip_background=args.skip_background)
        summary = EXPORTERS[args.format](args.dataset, args.out, storage_options=opts,
                                         out_storage_options=opts, shards=args.shards,
                                         keep=keep, images=args.images)
    except (FileNotFoundError, ValueError) as e:
        print(f"samdata export: {e}", file=sys.stderr)
        return 2
    print(f"exported {summary['images']} images, {summary['annotations']} masks as "
          f"{WRITES[args.format]} {args.out}")
    if "image_files" in summary:
        where = f"{args.out.rstrip('/')}/images" if args.format == "yolo" else args.images
        print(f"copied {summary['image_files']} images to {where}")
    if summary["filtered"]:
        print(f"filters dropped {summary['filtered']} masks")
    if summary.get("skipped") or summary.get("multi_part"):
        print(f"yolo: {summary.get('skipped', 0)} empty masks had no polygon (skipped); "
              f"{summary.get('multi_part', 0)} masks of several pieces kept their largest")
    if summary["failed"]:
        print(f"left out {len(summary['failed'])} images without masks (status not ok), "
              f"e.g. {summary['failed'][0]}", file=sys.stderr)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from PIL import Image

    from operators.dataset.maskset import find_row, load_source_image
    from operators.dataset.overlay import dataset_sheet, draw_overlay

    opts = _storage(args.endpoint_url)
    draw = dict(alpha=args.alpha, boxes=not args.no_boxes, points=not args.no_points)
    try:
        if args.sheet:
            image, shown, _ = dataset_sheet(args.dataset, args.sheet, opts,
                                            columns=args.columns, **draw)
            what = f"contact sheet of {shown} images"
        else:
            if args.image_id is None and args.key is None:
                print("samdata show: expected --image-id, --key or --sheet N, got none",
                      file=sys.stderr)
                return 2
            row = find_row(args.dataset, opts, image_id=args.image_id, key=args.key)
            if row["status"] != "ok":
                print(f"samdata show: image {row['key']} has no masks: {row['error']}",
                      file=sys.stderr)
                return 1
            image = draw_overlay(load_source_image(row, opts), row["annotations"] or [],
                                 **draw)
            what = f"image {row['image_id']} ({row['shard']}/{row['key']}), " \
                   f"{len(row['annotations'])} masks"
    except (FileNotFoundError, KeyError) as e:
        print(f"samdata show: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    Image.fromarray(image).save(args.out)
    print(f"wrote {args.out}: {what}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from . import submit as sub
    from .config import (
        AutolabelConfig,
        ConfigError,
        DistillConfig,
        EmbedConfig,
        EvaluateConfig,
        SegmentConfig,
        load_config,
    )

    cls = {"embed": EmbedConfig, "autolabel": AutolabelConfig, "segment": SegmentConfig,
           "evaluate": EvaluateConfig, "distill": DistillConfig}[args.job]
    try:
        cfg = load_config(args.config, args.set, cls)
    except ConfigError as e:
        print(f"samdata submit: {e}", file=sys.stderr)
        return 2
    try:
        if args.forward_secrets:
            print("samdata submit: --forward-secrets: the AWS key variables go into the job's "
                  "runtime_env, which Ray writes into the head's logs "
                  "(runtime_env_agent.log) and shows with the job's details to anyone who "
                  "can read the dashboard", file=sys.stderr)
        problem = sub.local_paths_problem(cfg.model_dump(mode="json"), args.address)
        if problem:  # before connecting: the cluster could not read it
            print(f"samdata submit: {problem}", file=sys.stderr)
            return 2
        job_id, env = sub.submit(args.job, cfg.model_dump(mode="json"), args.address,
                                 args.token_file, with_project=not args.image_has_project,
                                 pip=args.pip or None, job_id=args.job_id,
                                 forward_secrets=args.forward_secrets)
        print(job_id)
        print(f"submitted samdata {args.job} to {args.address} as {job_id}"
              + (f"; forwarded env vars: {', '.join(env)} (values not shown)" if env else ""),
              file=sys.stderr)
        if not args.follow:
            print(f"follow it: samdata jobs logs {job_id} --address {args.address}",
                  file=sys.stderr)
            return 0
        state = sub.follow(args.address, job_id, args.token_file)
    except sub.SubmitError as e:
        print(f"samdata submit: {e}", file=sys.stderr)
        return 1
    print(f"job {job_id} {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from . import submit as sub

    if args.action != "list" and not args.job_id:
        print(f"samdata jobs {args.action}: expected a JOB_ID (samdata jobs list shows them)",
              file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            jobs = sub.list_jobs(args.address, args.token_file)
            for j in jobs:
                print(f"{j['id']:28s} {j['job']:10s} {j['status']:10s} {j['started']}")
            if not jobs:
                print(f"no samdata jobs on {args.address}", file=sys.stderr)
        elif args.action == "status":
            print(sub.status(args.address, args.job_id, args.token_file))
        elif args.action == "logs":
            if args.follow:
                state = sub.follow(args.address, args.job_id, args.token_file)
                print(f"job {args.job_id} {state}", file=sys.stderr)
                return 0 if state == "SUCCEEDED" else 1
            print(sub.logs(args.address, args.job_id, args.token_file), end="")
        else:
            stopped = sub.stop(args.address, args.job_id, args.token_file)
            print(f"job {args.job_id}: " + ("stop requested" if stopped else "already ended"))
    except sub.SubmitError as e:
        print(f"samdata jobs: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # e.g. an unknown job id
        print(f"samdata jobs: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS",
                                                       "http://127.0.0.1:8265"),
                   help="the Ray head's dashboard / Jobs API address "
                   "(default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--token-file", help="Ray auth token file (default: $RAY_AUTH_TOKEN, "
                   "$RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)")


def _config_arguments(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """--config (the YAML of `what`) and repeatable --set KEY=VALUE overrides."""
    p.add_argument("--config", help=f"YAML {what} config (optional: every field can also "
                   f"come from --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example} (repeatable)")


def _job_arguments(p: argparse.ArgumentParser) -> None:
    _config_arguments(p, "job", "model.name=sam_vit_b")
    p.add_argument("--overwrite", action="store_true",
                   help="output.path holds another run's output (another model, checkpoint or "
                   "setting): clear its shards first instead of refusing")
    p.set_defaults(func=_cmd_job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samdata", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one line")
    parser.add_argument("--verbose", action="store_true",
                        help="keep Ray's own progress bars and log lines (off by default)")
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

    p = sub.add_parser(
        "make-sample",
        help="write a synthetic corpus of SA-1B-format shards (demos, tests)",
        description="Write SA-1B tar shards (sa_NNNNNN.tar with sa_<id>.jpg + sa_<id>.json) of "
        "synthetic images whose json holds real COCO-RLE masks of the drawn shapes.",
    )
    p.add_argument("--out", required=True, help="folder or s3:// prefix")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--images-per-shard", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=48, help="smallest image side (px)")
    p.add_argument("--max-side", type=int, default=160, help="largest image side (px)")
    p.add_argument("--max-shapes", type=int, default=4, help="shapes per image: 1..this (<= 8)")
    p.add_argument("--texture", type=float, default=0.0,
                   help="std of the grain over each image, in uint8 levels (0: flat colours)")
    p.add_argument("--background", action="store_true",
                   help="annotate the background (what no shape covers) as one more mask, "
                   "as SA-1B annotates stuff")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// outputs")
    p.set_defaults(func=_cmd_make_sample)

    p = sub.add_parser(
        "embed",
        help="compute image embeddings of a corpus into Parquet (Ray Data)",
        description="Read shards, embed every image with a registry model on a Ray actor pool, "
        "write one Parquet row per image (embedding as an Arrow fixed_shape_tensor), commit "
        "each shard with a commit marker in OUTPUT.samdata/. Reruns skip committed shards and "
        "redo partial ones. "
        "See configs/embed_sa1b.yaml for every field.",
    )
    _job_arguments(p)

    p = sub.add_parser(
        "autolabel",
        help="masks of a corpus into Parquet (SA-1B annotations): everything mode, or "
        "concept labels with categories (SAM 3, prompts.concepts)",
        description="Read shards, generate masks for everything in each image on a Ray actor "
        "pool (SamAutomaticMaskGenerator semantics and defaults), write one Parquet row per "
        "image with its SA-1B annotations (COCO RLE). Same shard commits and resume as embed. "
        "FastSAM (model.name=fastsam_x|fastsam_s) runs its one-pass everything mode instead "
        "(generator.detection_*; predicted_iou is the detection confidence). "
        "Concept labels: with a concept model (model.name=sam3, the official sam3.pt, its "
        "vocabulary bpe_simple_vocab_16e6.txt.gz beside it or model.vocabulary) and "
        "prompts.concepts (names, or a file of one name a line), every instance of each "
        "concept scoring above prompts.score_threshold (0.5), with category, category_id "
        "(its position in the list, from 1) and score; `samdata export --format coco` and "
        "`samdata evaluate concepts` take the output. "
        "See configs/autolabel_sa1b.yaml and configs/autolabel_concepts.yaml for every field.",
    )
    _job_arguments(p)

    p = sub.add_parser(
        "segment",
        help="one mask per prompt (boxes, points) for a whole corpus into Parquet",
        description="Read shards, take each image's prompts (prompts.source: the shard's own "
        "SA-1B json (bbox / point_coords), a COCO instances JSON, or a Parquet dataset of "
        "prompts such as a detector's boxes: key, boxes XYXY, optional points/labels/"
        "category/score), segment every prompt with a registry model on a Ray actor pool "
        "(SAM design: the mask of highest predicted IoU of 3, or the single mask; FastSAM: its "
        "box / point selection among its everything-mode masks), write one Parquet row per "
        "image with a result per prompt (the prompt, COCO RLE, bbox, area, predicted IoU, "
        "carried fields). Same shard commits and resume as embed; `samdata export --format "
        "coco` takes the output. See configs/segment_sa1b.yaml for every field.",
    )
    _job_arguments(p)

    p = sub.add_parser(
        "evaluate",
        help="the published protocols (box, points, agreement, proposals) on a corpus, and "
        "AP of concept labels (concepts)",
        description="Evaluate on a seeded sample of a corpus (evaluation.sample images, 1000 "
        "by default; --all for every image) against its ground truth (the shards' SA-1B json, "
        "or a COCO instances JSON): box = GT-box-prompted mIoU, all/small/medium/large "
        "(EfficientViT-SAM); points = mIoU after 1/3/5 RITM clicks; agreement = student vs "
        "--reference mIoU on GT boxes and seeded points (MobileSAM); proposals = class-"
        "agnostic AR@10/100/1000 and AR S/M/L of `samdata autolabel` datasets with "
        "pycocotools' COCOeval (SAM's ranking); concepts = box and mask AP, AP50, AP75, "
        "AP S/M/L and AP per category (COCOeval, maxDets 1/10/100) of concept-label datasets "
        "(--labels) against a COCO instances JSON with categories (ground_truth.source coco, "
        "ground_truth.path), categories matched by name (stripped, case-insensitive; no name "
        "in common is refused). Several --model (or --labels) give one row "
        "each. Writes results.json, results.md and results.png to output.path and prints the "
        "table and one JSON line. See configs/evaluate_sa1b.yaml for every field.",
    )
    p.add_argument("protocol", choices=["box", "points", "agreement", "proposals",
                                        "concepts"])
    _config_arguments(p, "evaluate", "evaluation.sample=200")
    p.add_argument("--model", action="append", metavar="NAME[=CHECKPOINT]",
                   help="a model to evaluate (repeatable; replaces the config's models)")
    p.add_argument("--reference", metavar="NAME[=CHECKPOINT]",
                   help="agreement: the teacher the models are compared with")
    p.add_argument("--labels", action="append", metavar="NAME=DATASET",
                   help="proposals, concepts: an autolabel dataset and its row name "
                   "(repeatable)")
    p.add_argument("--sample", type=int, help="images in the sample (default 1000)")
    p.add_argument("--all", action="store_true", help="every image instead of a sample")
    p.add_argument("--seed", type=int, help="the sample's seed (default 0)")
    p.add_argument("--out", help="report folder (output.path)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "distill",
        help="train a student from an embedding corpus on Ray Train (stage 1 / stage 2)",
        description="Stage 1 (encoder distillation): the student's image encoder learns the "
        "teacher's embeddings (`samdata embed` output; images from its image_jpeg column or "
        "the source shards) with the MSE over the un-padded cells; the student file carries "
        "the teacher's prompt encoder and mask decoder. Stage 2 (the mask decoder in the "
        "loop): box or point prompts from the shards' SA-1B annotations, targets from the "
        "teacher's decoder on the saved embeddings or from the ground truth. Ray Data decodes "
        "and preprocesses on CPU tasks; TorchTrainer trains (compute.workers, GPUs when the "
        "cluster has them) and checkpoints under output.path/output.name every "
        "output.checkpoint_every steps: the same command again resumes the run. Validation on "
        "the last data.val_shards shards (embedding MSE/cosine, agreement mIoU, box mIoU) is "
        "logged. Writes the student in its official format (build_model loads it), its "
        ".sha256 and a .json summary. See configs/distill_stage1.yaml and "
        "configs/distill_stage2.yaml for every field.",
    )
    _config_arguments(p, "distill", "stage1.steps=300")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser(
        "submit",
        help="run embed, autolabel, segment, evaluate or distill as a job on a Ray cluster "
        "(Ray Jobs API)",
        description="Validate the config here, upload the project and the config as the job's "
        "working dir (or only the config with --image-has-project), forward the non-secret AWS "
        "settings (region, endpoint) by name (credentials: the cluster's own identity, or "
        "--forward-secrets), submit, print the job id. --follow streams the logs and exits "
        "with the job's status. The same config runs locally with "
        "`samdata embed|autolabel|segment|evaluate|distill` (evaluate: the config's protocol; "
        "give output.path on shared storage, e.g. s3://, to read the report afterwards).",
    )
    p.add_argument("job", choices=["embed", "autolabel", "segment", "evaluate", "distill"])
    _job_arguments(p)
    _cluster_arguments(p)
    p.add_argument("--follow", action="store_true", help="stream logs until the job ends")
    p.add_argument("--image-has-project", action="store_true",
                   help="the cluster image has samdata installed: upload only the config")
    p.add_argument("--pip", action="append", metavar="REQ",
                   help="extra pip requirement for the job's runtime env (repeatable)")
    p.add_argument("--job-id", help="submission id to use (default: Ray picks one)")
    p.add_argument("--forward-secrets", action="store_true",
                   help="also send AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                   "AWS_SESSION_TOKEN / AWS_PROFILE to the job (Ray logs them on the head and "
                   "shows them in the dashboard); by default the job uses the cluster's own "
                   "identity and only region/endpoint settings are forwarded")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "jobs",
        help="list the submitted jobs; status, logs or stop of one",
        description="Ask the Ray Jobs API about the jobs submitted with `samdata submit`: "
        "`list` (id, job, status, start time, newest first), or the status, logs or stop of "
        "one JOB_ID.",
    )
    p.add_argument("action", choices=["list", "status", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="the id `samdata submit` printed (not for list)")
    _cluster_arguments(p)
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser(
        "export",
        help="auto-labels -> SA-1B JSON, COCO, YOLO segment or per-mask PNG files",
        description="Export a mask dataset (the output of `samdata autolabel` or `segment`, "
        "committed shards only). sa1b: OUT/{shard}/{key}.json per image, the SA-1B file "
        "format. coco: one instances JSON at OUT that pycocotools' COCO loads and COCOeval "
        "accepts (categories the labels carry, else one 'object'; score = the carried score, "
        "else predicted IoU). yolo: the Ultralytics segment format in folder OUT "
        "(images/, labels/ with one 'class x1 y1 x2 y2 ...' line per mask, normalised polygon "
        "of the mask's largest piece, and data.yaml). masks: OUT/{shard}/{key}/{i}.png "
        "(uint8 0/255) and metadata.csv per image, as segment-anything's scripts/amg.py "
        "writes them. Images whose status is not ok have no masks and are reported, not "
        "exported. Filters apply to every format, in this order: --min-score, --min-area, "
        "--skip-background, then --top-k.",
    )
    p.add_argument("dataset", help="mask dataset root (folder or s3:// prefix)")
    p.add_argument("--format", choices=["sa1b", "coco", "yolo", "masks", "hf"], required=True,
                   help="hf: an embedding dataset (samdata embed) for Hugging Face datasets, "
                   "whose loader has no dtype for Arrow's fixed_shape_tensor")
    p.add_argument("--out", required=True,
                   help="coco: the .json file; sa1b, yolo, masks: folder/prefix")
    p.add_argument("--images", metavar="DIR",
                   help="sa1b, coco, masks: also copy each image (its original bytes, from its "
                   "source shard) to DIR/{shard}/{key}{ext}; COCO file_name is then that path "
                   "relative to DIR (the image root), an SA-1B file_name relative to its "
                   "JSON's folder (DIR = OUT puts each image beside its JSON). yolo always "
                   "writes its images to OUT/images")
    p.add_argument("--min-score", type=float, metavar="S",
                   help="keep masks whose score (the carried score, else predicted_iou) >= S")
    p.add_argument("--min-area", type=int, metavar="PX", help="keep masks of >= PX pixels")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="keep the K best-scored masks of each image")
    p.add_argument("--skip-background", action="store_true",
                   help="drop whole-image masks: those covering >= 95%% of the image")
    p.add_argument("--shards", help="inclusive shard range, e.g. sa_000000..sa_000009")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// paths")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "show",
        help="draw an image's auto-labels (masks, boxes, prompt points) to a PNG",
        description="Render one image of a mask dataset with its masks tinted and outlined, "
        "their boxes and prompt points (--image-id or --key), or a contact sheet of the first "
        "N images (--sheet N). The image is read again from its source shard.",
    )
    p.add_argument("dataset", help="mask dataset root (folder or s3:// prefix)")
    p.add_argument("--image-id", type=int, help="SA-1B image id of the image to draw")
    p.add_argument("--key", help="sample key of the image to draw (e.g. sa_1)")
    p.add_argument("--sheet", type=int, metavar="N", help="contact sheet of the first N images")
    p.add_argument("--columns", type=int, default=4, help="contact sheet columns (default 4)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask tint opacity (default 0.5)")
    p.add_argument("--no-boxes", action="store_true", help="do not draw boxes")
    p.add_argument("--no-points", action="store_true", help="do not draw prompt points")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// paths")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser(
        "demo",
        help="the whole loop on embedded defaults and the shipped demo model (local Ray)",
        description="On a local Ray, under --out: write a held-out sample corpus (flat shapes "
        "with exact masks), autolabel it with the shipped sam_demo checkpoint "
        "(models/weights/sam_demo.pt, trained by `samdata distill` stage 2: see the README), "
        "draw a contact sheet of its masks, evaluate the proposals (AR) and the box-prompted "
        "mIoU against the exact masks (beside random weights), then embed the corpus with "
        "sam_demo as teacher, distill a mobile_sam_demo student for a short stage 1 run and "
        "evaluate its agreement with the teacher. Each step prints its summary; the end "
        "prints the numbers and the files. About 3 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default=DEMO_DIR, help=f"working folder (default ./{DEMO_DIR})")
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix (bad config, wrong data, missing files, a busy output): one line
    and exit 2, never a traceback."""
    from operators.evaluation.binding import GroundTruthMismatch
    from operators.shards.lease import OutputBusy

    from .config import ConfigError

    return (ConfigError, GroundTruthMismatch, OutputBusy, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError, ValueError, KeyError)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else (" ".join(ln.strip() for ln in lines) or
                                             type(e).__name__)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, before or after the command
    if "--verbose" in argv:  # Ray's own progress and logs too (read by ray_env.init_ray)
        from .ray_env import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    args = build_parser().parse_args([a for a in argv if a not in ("--debug", "--verbose")])
    if debug:
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"samdata {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - still one line; --debug shows the traceback
        print(f"samdata {args.command}: failed: {type(e).__name__}: {_one_line(e)} (rerun "
              f"with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
