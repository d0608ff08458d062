"""Everything-mode mask generation, batched for throughput.

Same semantics and defaults as segment-anything's `SamAutomaticMaskGenerator` (coco_rle
output), built differently: the crops of many images go through the encoder together and the
prompts of several crops through the decoder together; masks stay on the model's device until
filtered; low-resolution logits are upscaled only for masks that pass the IoU filter, in chunks;
stability, thresholding and NMS run on the device.

With SAM 2.1 (a HighResPromptableModel) it is the official `SAM2AutomaticMaskGenerator`: the
crops are embedded with their high-res features, which go to every decoder call, and
`generator.use_m2m` adds its one-step refinement (`_refine`). Its defaults differ only in
pred_iou_thresh (0.8; GeneratorConfig keeps SAM 1's 0.88).

No mask crosses to the host: each upscale chunk's surviving masks are run-length encoded where
they are (`runlength.masks_to_runs`: change points in the image frame, so uncropped by index
arithmetic, with areas and boxes) and only those, kilobytes a mask, are copied back. The crop-edge
filter, NMS and the annotations work from them. The COCO strings are built from the counts at
the end (`generate(images)`), or later on CPU workers (`generate(images, encode=False)`, then
`coco_rle.finish_annotations`), so that no per-mask host work is left in the model's loop.
The optional small-region cleanup (`min_mask_region_area > 0`, off by default) is per-mask host
work by nature: it decodes each kept mask from its counts on the host, cleans it and encodes the
changed ones again.

Device memory is bounded by three knobs, whatever the image size: `model.batch_size` crops
per encoder call, `generator.decoder_batch_size` prompts per decoder call (3 low-res masks
each) and `generator.upscale_batch_size` masks upscaled to crop resolution at once (float32 HxW
each, plus a bool copy and the run-length work; fewer on large crops, so that a chunk holds at
most `runtime.batch_size.MASK_PIXEL_BUDGET` pixels). Masks that survive the filters wait for NMS in
host memory as their change points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models import HighResPromptableModel, PromptableModel
from models.sam2 import LOW_RES_CLAMP
from models.transforms import check_image

from ..config import CPU_BATCH, GeneratorConfig
from ..runtime.batch_size import upscale_chunk
from .coco_rle import MaskRuns, runs_to_segmentations
from .geometry import crop_boxes, layer_point_grids, near_crop_edge, stability_score
from .nms import box_area, nms
from .regions import remove_small_regions
from .runlength import masks_to_runs


@dataclass
class _Crop:
    """One crop of one image and the masks found in it so far."""

    image: int  # index into the images of the call
    box: list[int]  # XYXY in the image
    layer: int  # crop layer (selects the point grid)
    orig_hw: tuple[int, int]  # the image's size
    runs: list[MaskRuns] = field(default_factory=list)  # host, M masks each, image frame
    boxes: list[np.ndarray] = field(default_factory=list)  # host int64 Mx4 XYXY, crop frame
    iou: list[torch.Tensor] = field(default_factory=list)  # float M (device)
    stability: list[torch.Tensor] = field(default_factory=list)  # float M (device)
    points: list[torch.Tensor] = field(default_factory=list)  # host float64 Mx2, crop pixels

    @property
    def hw(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return (y1 - y0, x1 - x0)


class MaskGenerator:
    """Everything-mode masks for a list of images, with a promptable registry model.

    model: a models.PromptableModel; generator: the job's `generator` section (the official
    generator's parameters, plus decoder_batch_size prompts per decoder call, default
    points_per_batch, taken across crops and images, and upscale_batch_size masks upscaled at
    once: throughput knobs that do not change the result beyond float rounding);
    batch_size: crops per encoder call (model.batch_size resolved); compile: model.compile,
    so a short encoder batch is padded to the call's first one and a compiled encoder sees one
    shape per call size. point_grids: optional explicit grids (one float (N,2) array in
    [0, 1] per crop layer) instead of points_per_side."""

    def __init__(self, model: nn.Module, generator: GeneratorConfig | None = None,
                 batch_size: int = CPU_BATCH, compile: bool = False,
                 point_grids: list[np.ndarray] | None = None) -> None:
        if not isinstance(model, PromptableModel):
            raise ValueError(f"expected a promptable model (models.PromptableModel), got "
                             f"{type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self.model = model.eval()
        self.generator = g = generator or GeneratorConfig()
        self.batch_size = batch_size
        self.compile = compile
        self.decoder_batch_size = g.decoder_batch_size or g.points_per_batch
        if point_grids is not None:
            if len(point_grids) != g.crop_n_layers + 1:
                raise ValueError(f"expected {g.crop_n_layers + 1} point grids (crop_n_layers "
                                 f"+ 1), got {len(point_grids)}")
            self.grids = [np.asarray(p, dtype=np.float64) for p in point_grids]
        else:
            self.grids = layer_point_grids(g.points_per_side, g.crop_n_layers,
                                           g.crop_n_points_downscale_factor)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray], encode: bool = True) -> list[list[dict]]:
        """RGB uint8 HxWx3 images -> per image, a list of SA-1B annotation dicts (without
        `id`): segmentation, bbox XYWH, area, predicted_iou, stability_score, point_coords
        [[x, y]], crop_box XYWH.

        segmentation: with `encode`, COCO compressed RLE {"size": [H, W], "counts": str};
        without, {"size": [H, W], "runs": int32 COCO counts}, for
        `coco_rle.finish_annotations` to turn into the same strings elsewhere (a CPU worker)."""
        s = self.generator
        # Crops of every image
        crops: list[_Crop] = []
        for i, image in enumerate(images):
            check_image(image)
            boxes, layers = crop_boxes(image.shape[:2], s.crop_n_layers, s.crop_overlap_ratio)
            crops += [_Crop(i, box, layer, image.shape[:2])
                      for box, layer in zip(boxes, layers, strict=True)]
        parts: list[list[dict]] = [[] for _ in images]
        pad_to = min(self.batch_size, len(crops)) if self.compile else 0
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            # Encode the crops together
            pixels = [images[c.image][c.box[1] : c.box[3], c.box[0] : c.box[2]] for c in chunk]
            prepared = [self.model.prepare_image(p) for p in pixels]
            # NHWC memory seen as NCHW, as the Embedder feeds it (and the batch probe sizes it)
            arrays, hws = [p for p, _ in prepared], [hw for _, hw in prepared]
            if len(arrays) < pad_to:  # zeros of the full input size, dropped after the encoder
                arrays += [np.zeros_like(arrays[0])] * (pad_to - len(arrays))
                hws += [arrays[0].shape[:2]] * (pad_to - len(hws))
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
            batch = batch.to(self.device, non_blocking=True)
            hws_d = torch.tensor(hws).to(self.device, non_blocking=True)
            high_res = None  # SAM 2's decoder also needs the high-res features of the crops
            if isinstance(self.model, HighResPromptableModel):
                feats = self.model.embed_images_with_features(batch, hws_d)
                embeddings = feats["image_embed"][: len(chunk)]
                high_res = [f[: len(chunk)] for f in feats["high_res_feats"]]
            else:
                embeddings = self.model.embed_images(batch, hws_d)[: len(chunk)]
            # Decode the point prompts of all of them, filtering as we go
            self._decode(chunk, embeddings, high_res)
            for crop in chunk:
                parts[crop.image].append(self._crop_nms(crop))
        return [self._merge(p, image.shape[:2], encode)
                for p, image in zip(parts, images, strict=True)]

    def _decode(self, chunk: list[_Crop], embeddings: torch.Tensor,
                high_res: list[torch.Tensor] | None = None) -> None:
        """Run every crop's point grid through the decoder, decoder_batch_size prompts a call
        (high_res: the crops' high-res features, for a HighResPromptableModel)."""
        points, prompts, owner = [], [], []
        for k, crop in enumerate(chunk):
            h, w = crop.hw
            pts = torch.from_numpy(self.grids[crop.layer] * np.array([[w, h]]))  # crop pixels
            points.append(pts)
            prompts.append(self.model.transform_coords(pts, crop.hw))  # float64, prompt frame
            owner.append(torch.full((len(pts),), k))
        points_all, prompts_all, owner_all = torch.cat(points), torch.cat(prompts), torch.cat(owner)
        for start in range(0, len(owner_all), self.decoder_batch_size):
            sl = slice(start, start + self.decoder_batch_size)
            own = owner_all[sl]
            first, last = int(own[0]), int(own[-1])
            # One embedding row per prompt, unless they all share one
            # (host -> device copies without non_blocking would each wait for the device)
            pick = (slice(first, first + 1) if first == last
                    else own.to(self.device, non_blocking=True))
            emb = embeddings[pick]
            extra = {} if high_res is None else {"high_res_features": [f[pick] for f in high_res]}
            coords = prompts_all[sl].to(self.device, non_blocking=True)[:, None, :]
            labels = torch.ones((len(own), 1), dtype=torch.int, device=self.device)
            low_res, iou = self.model.decode(emb, point_coords=coords, point_labels=labels,
                                             multimask_output=True, **extra)
            # float32 before the threshold: under bf16 autocast 0.88 itself rounds to 0.8789
            iou = iou.float()
            for k in range(first, last + 1):
                rows = (own == k).nonzero()[:, 0]
                if len(rows):
                    rows_d = rows.to(self.device, non_blocking=True)
                    crop_low_res, crop_iou = low_res[rows_d], iou[rows_d]
                    if self.generator.use_m2m:
                        crop_extra = {} if high_res is None else {
                            "high_res_features": [f[k : k + 1] for f in high_res]}
                        crop_low_res, crop_iou = self._refine(
                            embeddings[k : k + 1], coords[rows_d], crop_low_res, crop_extra)
                    self._filter(chunk[k], crop_low_res, crop_iou, points_all[sl][rows])

    def _refine(self, embedding: torch.Tensor, coords: torch.Tensor, low_res: torch.Tensor,
                extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's one-step refinement (`use_m2m`): every mask of one crop's prompts decoded
        again from its own point with its low-res logits (clamped to +-32, as the official
        predictor hands them back) as the mask prompt, single-mask output.
        embedding 1xCxhxw; coords Px1x2 (prompt frame); low_res PxCx4hx4w ->
        (PxCx4hx4w refined logits, PxC float32 IoU)."""
        p, c = low_res.shape[:2]
        mask_input = low_res.flatten(0, 1)[:, None].clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)
        labels = torch.ones((p * c, 1), dtype=torch.int, device=self.device)
        refined, iou = self.model.decode(
            embedding, point_coords=coords.repeat_interleave(c, dim=0), point_labels=labels,
            mask_input=mask_input, multimask_output=False, **extra)
        return refined.reshape(p, c, *refined.shape[-2:]), iou.float().reshape(p, c)

    def _filter(self, crop: _Crop, low_res: torch.Tensor, iou: torch.Tensor,
                points: torch.Tensor) -> None:
        """Keep the masks of one crop's prompts that pass the IoU, stability and crop-edge
        filters. low_res PxCxhxw logits, iou PxC, points float64 Px2 (crop pixels, host).

        Each upscale chunk waits for the device to learn which masks are stable (an index set
        goes to the host, then back without waiting), then in `masks_to_runs` (once per 2**26
        crop pixels, and for the copy back); boolean indexing would wait at every use."""
        s, model = self.generator, self.model
        threshold = model.mask_threshold
        per_prompt = low_res.shape[1]
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)  # (P*C, h, w), (P*C,)
        points = points.repeat_interleave(per_prompt, dim=0)
        # Filter by predicted IoU before upscaling
        if s.pred_iou_thresh > 0:
            kept = (iou > s.pred_iou_thresh).cpu().nonzero()[:, 0]
            kept_d = kept.to(self.device, non_blocking=True)
            low_res, iou, points = low_res[kept_d], iou[kept_d], points[kept]
        x0, y0 = crop.box[:2]
        orig_box = [0, 0, crop.orig_hw[1], crop.orig_hw[0]]
        step = upscale_chunk(s.upscale_batch_size, crop.hw)
        for start in range(0, len(iou), step):
            sl = slice(start, start + step)
            logits = model.postprocess_masks(low_res[sl, None], crop.hw)[:, 0]  # (M, h, w)
            stab = stability_score(logits, threshold, s.stability_score_offset)
            # Thresholded once, before any gather: a bool copy, not a float one
            binary = logits > threshold  # (M, h, w)
            del logits
            chunk_iou, chunk_points = iou[sl], points[sl]
            # Filter by stability
            if s.stability_score_thresh > 0:
                idx = (stab >= s.stability_score_thresh).cpu().nonzero()[:, 0]
                if len(idx) < len(stab):
                    idx_d = idx.to(self.device, non_blocking=True)
                    binary, stab, chunk_iou = binary[idx_d], stab[idx_d], chunk_iou[idx_d]
                    chunk_points = chunk_points[idx]
            # Change points (in the image frame), areas and boxes; only these reach the host
            runs = masks_to_runs(binary, crop.box, crop.orig_hw)
            del binary
            # Drop masks touching an inner crop edge, judged on crop-frame boxes ([0, 0, 0, 0]
            # for an empty mask, as the official's batched_mask_to_box gives)
            boxes = np.where(runs.areas[:, None] > 0, runs.boxes - [x0, y0, x0, y0], 0)
            near = near_crop_edge(torch.from_numpy(boxes), crop.box, orig_box).numpy()
            if near.any():
                inner = np.flatnonzero(~near)
                inner_d = torch.from_numpy(inner).to(self.device, non_blocking=True)
                runs, boxes = runs.take(inner), boxes[inner]
                stab, chunk_iou = stab[inner_d], chunk_iou[inner_d]
                chunk_points = chunk_points[torch.from_numpy(inner)]
            crop.runs.append(runs)
            crop.boxes.append(boxes)
            crop.iou.append(chunk_iou)
            crop.stability.append(stab)
            crop.points.append(chunk_points)

    def _crop_nms(self, crop: _Crop) -> dict:
        """NMS within one crop; boxes and points moved to the image frame (host)."""
        if not crop.runs:
            return {"runs": MaskRuns.empty(crop.orig_hw), "boxes": np.zeros((0, 4), np.int64),
                    "iou": torch.zeros(0), "stability": torch.zeros(0),
                    "points": torch.zeros(0, 2, dtype=torch.float64), "crop_box": crop.box}
        boxes, iou = np.concatenate(crop.boxes), torch.cat(crop.iou)
        boxes_d = torch.from_numpy(boxes).to(self.device, non_blocking=True)
        keep = nms(boxes_d.float(), iou, self.generator.box_nms_thresh)
        keep_host = keep.cpu()
        x0, y0 = crop.box[:2]
        return {"runs": MaskRuns.cat(crop.runs, crop.orig_hw).take(keep_host.numpy()),
                "boxes": boxes[keep_host.numpy()] + [x0, y0, x0, y0],
                "iou": iou[keep].cpu(), "stability": torch.cat(crop.stability)[keep].cpu(),
                "points": torch.cat(crop.points)[keep_host] + torch.tensor([x0, y0]),
                "crop_box": crop.box}

    def _merge(self, parts: list[dict], orig_hw: tuple[int, int], encode: bool) -> list[dict]:
        """NMS across the crops of one image, optional small-region cleanup, SA-1B dicts
        (segmentation encoded or as counts, see `generate`)."""
        s = self.generator
        boxes = np.concatenate([p["boxes"] for p in parts])  # int64 Nx4 XYXY, image frame
        crop_of = [k for k, p in enumerate(parts) for _ in range(len(p["boxes"]))]
        order = list(range(len(crop_of)))
        if len(parts) > 1 and crop_of:
            # NMS across crops: prefer masks from smaller crops
            crops = torch.tensor([parts[k]["crop_box"] for k in crop_of], dtype=torch.float,
                                 device=self.device)
            boxes_d = torch.from_numpy(boxes).to(self.device, non_blocking=True)
            order = nms(boxes_d.float(), 1 / box_area(crops), s.crop_nms_thresh).tolist()
        runs = MaskRuns.cat([p["runs"] for p in parts], orig_hw).take(order)
        boxes = boxes[order]
        iou = torch.cat([p["iou"] for p in parts])[order].tolist()
        stability = torch.cat([p["stability"] for p in parts])[order].tolist()
        points = torch.cat([p["points"] for p in parts])[order].tolist()
        crop_box = [parts[crop_of[i]]["crop_box"] for i in order]
        if s.min_mask_region_area > 0 and len(order):
            keep, runs, boxes = self._clean_small_regions(runs, boxes)
            iou, stability = [iou[i] for i in keep], [stability[i] for i in keep]
            points, crop_box = [points[i] for i in keep], [crop_box[i] for i in keep]
        out = []
        for k, seg in enumerate(runs_to_segmentations(runs, encode)):
            x0, y0, x1, y1 = boxes[k].tolist()
            cx0, cy0, cx1, cy1 = crop_box[k]
            out.append({
                "segmentation": seg,
                "area": int(runs.areas[k]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(iou[k]),
                "point_coords": [[float(v) for v in points[k]]],
                "stability_score": float(stability[k]),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        return out

    def _clean_small_regions(self, runs: MaskRuns, boxes: np.ndarray
                             ) -> tuple[list[int], MaskRuns, np.ndarray]:
        """Fill small holes and drop small islands of every mask, then NMS again preferring
        unchanged masks (threshold: the larger of the two NMS thresholds), as the official
        generator does; changed masks get their new box. Host work, mask by mask: each is
        decoded from its change points and the changed ones are encoded again (on the CPU).

        runs: N masks; boxes int64 Nx4 XYXY (image frame). Returns the kept indices (NMS
        order) and the runs and boxes of the kept masks."""
        s = self.generator
        area = s.min_mask_region_area
        pieces, nms_boxes, unchanged = [], [], []
        boxes = boxes.copy()
        for i in range(len(runs)):
            mask, filled = remove_small_regions(runs.mask(i), area, "holes")
            mask, dropped = remove_small_regions(mask, area, "islands")
            unchanged.append(float(not (filled or dropped)))
            piece = runs.take([i])
            if filled or dropped:
                piece = masks_to_runs(torch.from_numpy(np.ascontiguousarray(mask))[None])
                boxes[i] = piece.boxes[0]
            pieces.append(piece)
            nms_boxes.append(piece.boxes[0])  # of the mask as it is now ([0, 0, 0, 0]: empty)
        keep = nms(torch.from_numpy(np.stack(nms_boxes)).float(), torch.tensor(unchanged),
                   max(s.box_nms_thresh, s.crop_nms_thresh)).tolist()
        return keep, MaskRuns.cat(pieces, runs.hw).take(keep), boxes[keep]
