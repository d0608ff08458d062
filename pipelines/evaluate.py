"""`samdata evaluate`: the published protocols on a seeded sample of a corpus, as one report:
results.json, results.md (the table) and results.png (the chart) in output.path, and the
report printed as text and as one JSON line.

box / points / agreement: shards -> sample scores -> the chosen images, decoded with their json
-> every model on the actor pool (per-instance IoUs) -> mIoU per model and size bucket.
proposals: label datasets -> the chosen images -> their ground truth -> COCOeval per dataset.
concepts: concept-label datasets -> the chosen images -> their COCO ground truth (bound by
sha256 and size) -> categories matched by name -> box and mask COCOeval AP per dataset.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec

from operators.dataset.export import ConceptList
from operators.dataset.maskset import iter_rows
from operators.evaluation.binding import (
    GroundTruthMismatch,
    ImageFacts,
    coco_problem,
    label_problem,
    refuse,
    sa1b_problem,
)
from operators.evaluation.concepts import (
    average_precision,
    concept_detections,
    concept_instances,
    ground_truth_categories,
    match_categories,
    refuse_without_match,
)
from operators.evaluation.ground_truth import (
    CocoGroundTruth,
    coco_annotations,
    load_ground_truth,
)
from operators.evaluation.metrics import MiouAccumulator
from operators.evaluation.prompted import PromptedEvaluator
from operators.evaluation.proposals import average_recall, coco_ground_truth, rank_proposals
from operators.evaluation.report import category_table, markdown_table, render_chart
from operators.evaluation.sampling import (
    census,
    choose_sample,
    read_annotations,
    read_selected,
    row_facts,
    sample_score,
)
from operators.shards.listing import Shard, list_shards
from operators.shards.schema import shard_item

from .config import EvaluateConfig
from .preflight import preflight_evaluate
from .ray_env import check_room, init_ray, resolve_actors
from .runner import map_on_actors

GT_NOTE = {"sa1b": "the shards' SA-1B annotations (on SA-1B itself: SAM's released "
                   "output, not human ground truth)",
           "coco": "a COCO instances JSON"}


# The convention for a prompt where both masks are empty (IoU 0/0); the ground-truth
# protocols never meet it (every instance has area >= 1)
AGREEMENT_EMPTY = ("A prompt for which the student's and the reference's chosen masks are "
                   "both empty counts as IoU 0 (disagreement), as metrics.mask_iou does.")


@dataclass
class EvaluationReport:
    """What `samdata evaluate` measured: `results` per row (model or label dataset) in the
    layout of operators/evaluation/report.py, and how many images and instances it saw."""

    protocol: str
    output: str
    ground_truth: str
    sample: dict[str, Any]
    results: dict[str, dict] = field(default_factory=dict)
    images: int = 0  # evaluated
    images_failed: list[dict] = field(default_factory=list)  # {shard, key, error}
    images_without_ground_truth: int = 0  # chosen images with no ground truth on record
    labels_failed: dict[str, int] = field(default_factory=dict)  # proposals: error rows by
    #   dataset among the evaluated images (counted with recall 0, or excluded: `failed_labels`)
    failed_labels: str = "zero"
    categories: dict[str, dict] = field(default_factory=dict)  # concepts: per dataset, the
    #   ground-truth names matched, the label names the ground truth lacks ("labels_only")
    #   and the ground-truth names no label matched ("ground_truth_only"), see
    #   operators/evaluation/concepts.py
    instances: int = 0  # ground-truth instances evaluated (area >= 1)
    random_weights: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        d["images_failed"] = self.images_failed[:20]
        d["images_failed_count"] = len(self.images_failed)
        return d

    def table(self) -> str:
        return markdown_table(self.results)

    def text(self) -> str:
        n = len(self.images_failed)
        lines = [f"samdata evaluate {self.protocol}: {self.images} images, {self.instances} "
                 f"ground-truth instances, {n} images failed, {self.seconds:.1f} s",
                 f"  ground truth: {GT_NOTE[self.ground_truth]}",
                 f"  sample: {json.dumps(self.sample)}"]
        if self.images_without_ground_truth:
            lines.append(f"  {self.images_without_ground_truth} chosen images have no ground "
                         f"truth on record and are not evaluated")
        for name, count in self.labels_failed.items():
            how = ("left out of every row" if self.failed_labels == "exclude"
                   else "counted with recall 0" if self.protocol == "proposals"
                   else "counted as an image without labels (its instances missed)")
            lines.append(f"  ** {name}: its labeller failed on {count} image(s), {how} "
                         f"(evaluation.failed_labels) **")
        for name, cats in self.categories.items():
            lines.append(f"  {name}: categories evaluated {cats['matched']}")
            if cats["labels_only"]:
                lines.append(f"  ** {name}: label categories not in the ground truth, left "
                             f"out: {cats['labels_only']} **")
            if cats["ground_truth_only"]:
                lines.append(f"  {name}: ground-truth categories never labelled, not "
                             f"evaluated: {cats['ground_truth_only']}")
        if self.random_weights:
            lines.append(f"  ** RANDOM WEIGHTS: {', '.join(self.random_weights)}: their numbers "
                         f"are meaningless **")
        lines += [f"  failed {f['shard']}/{f['key']}: {f['error']}" for f in
                  self.images_failed[:5]]
        if self.protocol == "agreement":
            lines.append(f"  {AGREEMENT_EMPTY}")
        lines += ["", self.table().rstrip() if self.results else "no results"]
        if (per_category := category_table(self.results)):
            lines += ["", per_category.rstrip()]
        lines += ["",
                  f"  report: {self.output}/results.json, "
                  f"results.md, results.png"]
        return "\n".join(lines)


def run_evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    """Run the protocol of `cfg`, write its report files to output.path and return it."""
    start = time.perf_counter()
    preflight_evaluate(cfg)  # checkpoints and corpus, before Ray starts
    sample = {"size": None if cfg.evaluation.all else cfg.evaluation.sample,
              "all": cfg.evaluation.all, "seed": cfg.evaluation.seed}
    report = EvaluationReport(protocol=cfg.protocol, output=cfg.output.path.rstrip("/"),
                              ground_truth=cfg.ground_truth.source, sample=sample)
    if cfg.protocol == "proposals":
        _proposals(cfg, report)
    elif cfg.protocol == "concepts":
        _concepts(cfg, report)
    else:
        _prompted(cfg, report)
    report.seconds = time.perf_counter() - start
    write_report(report, cfg.storage.options())
    return report


def _prompted(cfg: EvaluateConfig, report: EvaluationReport) -> None:
    """box / points / agreement (see the module docstring) into `report`."""
    import ray

    opts = cfg.storage.options()
    shards = list_shards(cfg.input.urls, cfg.input.shards, cfg.input.limit, opts)
    items = [shard_item(s) for s in shards]
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    io_kwargs = dict(storage_options=opts, storage=cfg.storage)

    # Sample: score every sample and read its facts (no decoding), keep the `sample` lowest
    rows = list(ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
        census, fn_kwargs=dict(input_cfg=cfg.input, seed=cfg.evaluation.seed, **io_kwargs)
    ).iter_rows())
    if not rows:
        raise GroundTruthMismatch(f"input: expected samples to evaluate in {cfg.input.urls}, "
                                  f"got none")
    chosen = choose_sample(rows, len(rows) if cfg.evaluation.all else cfg.evaluation.sample)
    # Bind the ground truth to the chosen images before any model runs
    wanted = {(shard, key) for shard, keys in chosen.items() for key in keys}
    picked = {(r["shard"], r["key"]): r for r in rows if (r["shard"], r["key"]) in wanted}
    report.images_without_ground_truth = check_prompted_ground_truth(
        cfg, [row_facts(r) for r in picked.values()],
        {k: bool(r["has_json"]) for k, r in picked.items()}, opts)
    todo = [dict(item, keys=chosen[item["shard"]]) for item in items if item["shard"] in chosen]
    # Read and decode the chosen images, with their json's annotations, on CPU tasks
    ds = ray.data.from_items(todo, override_num_blocks=len(todo)).flat_map(
        read_selected, fn_kwargs=dict(model_name=cfg.models[0].name, input_cfg=cfg.input,
                                      **io_kwargs))
    # Every model on the protocol, on the actor pool: per-instance IoUs
    actors, gpus = resolve_actors(cfg.compute.actors, cfg.compute.gpus_per_actor)
    check_room(cfg.ray.address, actors * cfg.compute.cpus_per_actor, actors * gpus,
               f"{actors} model actor(s) (compute.actors x compute.cpus_per_actor)",
               "lower compute.actors or compute.cpus_per_actor (e.g. 0.5), or give the Ray "
               "more CPUs (ray.num_cpus)")
    ds = map_on_actors(ds, PromptedEvaluator, dict(
        protocol=cfg.protocol, models=list(cfg.models), evaluation=cfg.evaluation,
        ground_truth=cfg.ground_truth, reference=cfg.reference, generator=cfg.generator),
        cfg.compute, opts, actors, gpus)
    # mIoU per model, protocol part and size bucket, on the driver
    report.results = aggregate(ds.iter_rows(), report)
    report.random_weights = [m.row_name for m in cfg.models if m.checkpoint is None]
    if cfg.reference is not None and cfg.reference.checkpoint is None:
        report.random_weights.append(f"reference {cfg.reference.name}")


def check_prompted_ground_truth(cfg: EvaluateConfig, facts: list[ImageFacts],
                                has_json: dict[tuple[str, str], bool], opts: dict) -> int:
    """Refuse (GroundTruthMismatch) when the ground truth does not describe the chosen images,
    or none of them has any; return how many have none on record."""
    problems, without = [], 0
    if cfg.ground_truth.source == "sa1b":
        for f in facts:
            if not has_json[(f.shard, f.key)]:
                without += 1
            elif (p := sa1b_problem(f)) is not None:
                problems.append((f.where, p))
        where = "SA-1B json members beside the images (ground_truth.source sa1b)"
    else:
        coco = CocoGroundTruth(cfg.ground_truth.path, opts)
        for f in facts:
            row = coco.index.find(f.key)
            if row is None:
                without += 1
            elif (p := coco_problem(coco.images[row], f)) is not None:
                problems.append((f.where, p))
        where = f"images of '{cfg.ground_truth.path}' matching the sample keys"
    refuse(problems, "the ground truth and the images")
    if without == len(facts):
        raise GroundTruthMismatch(f"no ground truth found for any of the {len(facts)} chosen "
                                  f"images: expected {where}")
    return without


def aggregate(rows: Iterable[dict], report: EvaluationReport) -> dict[str, dict]:
    """The evaluation actor's rows -> results per model row (MiouAccumulator summaries: "box",
    "clicks" {n: ...}, "agreement", "agreement_points"); counts images, failures and
    instances into `report`."""
    accs: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "ok":
            report.images_failed.append({"shard": row["shard"], "key": row["key"],
                                         "error": row["error"]})
            continue
        report.images += 1
        report.instances += int(row["instances"])
        for name, parts in json.loads(row["results"]).items():
            mine = accs.setdefault(name, {})
            for part, pairs in parts.items():
                if part == "clicks":
                    for n, by_n in pairs.items():
                        _add(mine.setdefault("clicks", {}).setdefault(int(n), MiouAccumulator()),
                             by_n)
                else:
                    _add(mine.setdefault(part, MiouAccumulator()), pairs)
    return {name: {part: ({n: a.summary() for n, a in sorted(acc.items())}
                          if part == "clicks" else acc.summary())
                   for part, acc in parts.items()}
            for name, parts in accs.items()}


def _add(acc: MiouAccumulator, pairs: list[list[float]]) -> None:
    for iou, area in pairs:
        acc.add(iou, area)


def _sampled_labels(cfg: EvaluateConfig, report: EvaluationReport
                    ) -> tuple[dict[str, dict[tuple[str, str], dict]], list[tuple[str, str]],
                               dict[tuple[str, str], dict]]:
    """The label datasets' rows by (shard, key), the sampled (shard, key)s that every dataset
    has a row for (evaluation.sample / all, failed_labels) and one row per sampled image (an
    ok one where a dataset has it); counts failed label rows and random weights into
    `report`."""
    opts = cfg.storage.options()
    report.failed_labels = cfg.evaluation.failed_labels
    # The images every label dataset has a row for (ok, or an error row: its labeller failed)
    columns = ("image_id", "key", "shard", "source_uri", "width", "height", "status",
               "checkpoint_sha256", "image_sha256")
    rows_of: dict[str, dict[tuple[str, str], dict]] = {}
    for name, path in cfg.labels.items():
        rows_of[name] = {(r["shard"], r["key"]): r for r in iter_rows(path, opts,
                                                                      columns=columns)}
        if not rows_of[name]:
            raise FileNotFoundError(f"labels.{name}: expected label rows under '{path}', got "
                                    f"none")
        ok = [r for r in rows_of[name].values() if r["status"] == "ok"]
        if ok and all(r["checkpoint_sha256"] is None for r in ok):
            report.random_weights.append(name)  # labels of a model without a checkpoint
    common = set.intersection(*(set(rows) for rows in rows_of.values()))
    failed = {k for k in common if any(rows[k]["status"] != "ok" for rows in rows_of.values())}
    if cfg.evaluation.failed_labels == "exclude":
        common -= failed
    # Sample: the `sample` of lowest score
    if cfg.evaluation.all:
        keys = sorted(common)
    else:
        chosen = choose_sample(({"shard": s, "key": k,
                                 "score": sample_score(cfg.evaluation.seed, s, k)}
                                for s, k in common), cfg.evaluation.sample)
        keys = sorted((s, k) for s, ks in chosen.items() for k in ks)
    if not keys:
        raise GroundTruthMismatch("labels: expected images that every label dataset has a "
                                  "row for, got none in common")
    for name, rows in rows_of.items():
        n = sum(rows[k]["status"] != "ok" for k in keys)
        if cfg.evaluation.failed_labels == "exclude":
            n = sum(rows[k]["status"] != "ok" for k in failed)
        if n:
            report.labels_failed[name] = n
    # One row per image (an ok one where a dataset has it: failed rows have no size)
    first = {k: next((rows[k] for rows in rows_of.values() if rows[k]["status"] == "ok"),
                     next(iter(rows_of.values()))[k]) for k in keys}
    return rows_of, keys, first


def _proposals(cfg: EvaluateConfig, report: EvaluationReport) -> None:
    """proposals (see the module docstring) into `report`."""
    opts = cfg.storage.options()
    rows_of, keys, first = _sampled_labels(cfg, report)
    # Ground truth of the chosen images, bound to the label rows: the shards' json (Ray
    # tasks, with the images' bytes hashed), or a COCO JSON
    instances, sizes = _ground_truth(cfg, [first[k] for k in keys], rows_of, opts)
    images, annotations = [], []
    image_id = {}
    for n, k in enumerate(keys, start=1):
        row = dict(first[k])
        if row["height"] is None and sizes.get(k):
            row["height"], row["width"] = sizes[k]
        if instances.get(k) is None or row["height"] is None:
            report.images_without_ground_truth += 1
            continue
        image_id[k] = n
        images.append({"id": n, "height": row["height"], "width": row["width"],
                       "file_name": f"{k[1]}"})
        annotations += coco_annotations(instances[k], n, len(annotations) + 1, row["height"],
                                        row["width"])
    if not images:
        raise GroundTruthMismatch(f"no ground truth found for any of the {len(keys)} chosen "
                                  f"images of the labels")
    report.images = len(images)
    report.instances = sum(a["area"] >= 1 and not a["iscrowd"] for a in annotations)
    gt = coco_ground_truth(images, annotations)
    # Each dataset's masks, ranked by the mean of predicted IoU and stability, against it (an
    # image its labeller failed on has no masks: recall 0 there)
    for name, path in cfg.labels.items():
        detections = []
        for row in iter_rows(path, opts, columns=("key", "shard", "status", "annotations")):
            k = (row["shard"], row["key"])
            if k in image_id and row["status"] == "ok":
                detections += rank_proposals(image_id[k], row["annotations"] or [])
        report.results[name] = {"proposals": average_recall(gt, detections)}


def _ground_truth(cfg: EvaluateConfig, rows: list[dict],
                  rows_of: dict[str, dict[tuple[str, str], dict]], opts: dict
                  ) -> tuple[dict[tuple[str, str], list[dict] | None],
                             dict[tuple[str, str], tuple[int, int]]]:
    """((shard, key) -> ground-truth instances of the label rows' images (None: none found),
    (shard, key) -> (h, w) as the ground truth's side knows it). Refuses (GroundTruthMismatch)
    when the ground truth, or the images at the rows' source_uri, are not those the labels
    were made from."""
    source = load_ground_truth(cfg.ground_truth, opts)
    problems = []
    if not source.needs_annotations:  # a COCO JSON: its entries against the label rows
        sizes = _bind_coco(source, rows)
        return {(r["shard"], r["key"]): source(r["key"]) for r in rows}, sizes
    import ray

    by_url: dict[str, dict] = {}
    for r in rows:
        url = r["source_uri"].split("#", 1)[0]
        shard = Shard.from_url(r["shard"], url)
        by_url.setdefault(url, shard_item(shard, keys=[]))["keys"].append(r["key"])
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    items = list(by_url.values())
    fmt = cfg.input.format if cfg.input is not None else "auto"
    ds = ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
        read_annotations, fn_kwargs=dict(fmt=fmt, storage_options=opts, storage=cfg.storage))
    found, sizes = {}, {}
    for r in ds.iter_rows():
        k = (r["shard"], r["key"])
        facts = row_facts(r)
        if facts.hw is not None:
            sizes[k] = facts.hw
        for name, label_rows in rows_of.items():
            if k in label_rows and (p := label_problem(
                    label_rows[k], facts, f"the row of labels '{name}'")) is not None:
                problems.append((facts.where, p))
        if (p := sa1b_problem(facts)) is not None:
            problems.append((facts.where, p))
        found[k] = source(r["key"], r["annotations_json"])
    missing = [(f"{r['shard']}/{r['key']}", f"no such sample at its source_uri "
                f"'{r['source_uri']}'") for r in rows if (r["shard"], r["key"]) not in found]
    refuse(problems + missing, "the labels and the images at their source_uri")
    return {(r["shard"], r["key"]): found.get((r["shard"], r["key"])) for r in rows}, sizes


def _bind_coco(source: CocoGroundTruth, rows: list[dict]) -> dict[tuple[str, str],
                                                                    tuple[int, int]]:
    """Refuse (GroundTruthMismatch) when a COCO file's entry of a label row's image is of
    other bytes (samdata_sha256) or another size; return (shard, key) -> (h, w) as the COCO
    file says, for the rows it has an entry for."""
    problems, sizes = [], {}
    for r in rows:
        entry = source.index.find(r["key"])
        if entry is None:
            continue
        facts = ImageFacts(r["shard"], r["key"], (r["height"], r["width"]) if r["height"]
                           else None, r["image_sha256"] or "")
        if (p := coco_problem(source.images[entry], facts)) is not None:
            problems.append((facts.where, p))
        image = source.images[entry]
        sizes[(r["shard"], r["key"])] = (int(image["height"]), int(image["width"]))
    refuse(problems, "the COCO ground truth and the labelled images")
    return sizes


def _concepts(cfg: EvaluateConfig, report: EvaluationReport) -> None:
    """concepts (see the module docstring) into `report`."""
    opts = cfg.storage.options()
    rows_of, keys, first = _sampled_labels(cfg, report)
    # The COCO ground truth, bound to the label rows' images, and its categories by name
    source = CocoGroundTruth(cfg.ground_truth.path, opts)
    gt_cats = ground_truth_categories(source.categories, f"'{cfg.ground_truth.path}'")
    sizes = _bind_coco(source, [first[k] for k in keys])
    images, annotations, image_hw = [], [], {}
    for n, k in enumerate(keys, start=1):
        entry = source.index.find(k[1])
        if entry is None:
            report.images_without_ground_truth += 1
            continue
        h, w = sizes[k]
        image_hw[k] = (n, h, w)
        images.append({"id": n, "height": h, "width": w, "file_name": k[1]})
        annotations += concept_instances(
            source.annotations[entry], n, len(annotations) + 1, h, w,
            f"'{cfg.ground_truth.path}' image {source.images[entry]['id']}")
    if not images:
        raise GroundTruthMismatch(f"no ground truth found for any of the {len(keys)} chosen "
                                  f"images of the labels in '{cfg.ground_truth.path}'")
    gt = {"images": images, "annotations": annotations,
          "categories": [dict(c) for c in gt_cats.values()]}
    # Each dataset's instances of the chosen images and its category names (the concept
    # list its rows declare, then any other name its annotations carry)
    labelled: dict[str, tuple[list[dict], list[str]]] = {}
    for name, path in cfg.labels.items():
        declared, found, kept = ConceptList(), {}, []
        for row in iter_rows(path, opts, columns=("key", "shard", "status", "settings",
                                                  "annotations")):
            declared.add(row)
            k = (row["shard"], row["key"])
            if k in image_hw and row["status"] == "ok":
                for ann in row["annotations"] or []:
                    if ann.get("category") is not None:
                        found.setdefault(ann["category"], None)
                kept.append((k, row["annotations"] or []))
        names = list(declared.concepts or []) + [c for c in found
                                                 if c not in (declared.concepts or [])]
        if not names:
            raise GroundTruthMismatch(
                f"labels.{name}: expected concept labels (annotations with a category, from "
                f"`samdata autolabel` with prompts.concepts), got class-agnostic ones under "
                f"'{path}' (measure those with the proposals protocol)")
        labelled[name] = (kept, names)
    # Match the names, refusing a dataset that shares none with the ground truth, before
    # anything is measured
    matches = {}
    for name, (_, names) in labelled.items():
        matches[name] = match_categories(names, gt_cats)
        refuse_without_match(name, names, gt_cats, matches[name])
    report.images = len(images)
    report.instances = sum(a["area"] >= 1 and not a["iscrowd"] for a in annotations
                           if a["category_id"] in {c for m in matches.values()
                                                   for c in m.gt_id_of.values()})
    for name, (kept, _) in labelled.items():
        match = matches[name]
        boxes, masks = [], []
        for k, anns in kept:
            b, m = concept_detections(*image_hw[k], anns, match.gt_id_of)
            boxes += b
            masks += m
        cat_ids = sorted(set(match.gt_id_of.values()))
        report.categories[name] = match.as_dict()
        report.results[name] = {"concepts": {
            "box": average_precision(gt, boxes, "box", cat_ids),
            "mask": average_precision(gt, masks, "mask", cat_ids)}}


def write_report(report: EvaluationReport, storage_options: dict | None = None) -> None:
    """results.json, results.md and results.png under report.output (local or fsspec URL)."""
    fs, base = fsspec.core.url_to_fs(report.output, **(storage_options or {}))
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(f"{base}/results.json", (json.dumps(report.as_dict(), indent=1) + "\n").encode())
    notes = [f"# samdata evaluate {report.protocol}", "",
             f"{report.images} images ({json.dumps(report.sample)}), {report.instances} "
             f"ground-truth instances; ground truth: {GT_NOTE[report.ground_truth]}."]
    if report.protocol == "agreement":
        notes.append(AGREEMENT_EMPTY)
    if report.random_weights:
        notes.append(f"RANDOM WEIGHTS ({', '.join(report.random_weights)}): meaningless "
                     f"numbers.")
    for name, cats in report.categories.items():
        notes.append(f"{name}: categories evaluated {cats['matched']}; label categories not in "
                     f"the ground truth (left out) {cats['labels_only']}; ground-truth "
                     f"categories never labelled (not evaluated) {cats['ground_truth_only']}.")
    body = "\n".join(notes) + "\n\n" + (report.table() if report.results else "no results\n")
    if (per_category := category_table(report.results)):
        body += "\n" + per_category
    fs.pipe_file(f"{base}/results.md", body.encode())
    png = io.BytesIO()
    render_chart(report.results or {"(none)": {}}).save(png, format="PNG")
    fs.pipe_file(f"{base}/results.png", png.getvalue())
