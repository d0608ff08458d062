"""Everything-mode mask generation, batched for throughput.

Same semantics and defaults as segment-anything's `SamAutomaticMaskGenerator` (coco_rle
output), built differently: the crops of many images go through the encoder together, masks
stay on the model's device until filtered, low-resolution logits are upscaled only for masks
that pass the IoU filter, stability/boxes/NMS run on the device, RLE encoding comes last and
only for kept masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.transforms import check_image, longest_side_shape

from .amg import (
    box_area,
    crop_boxes,
    layer_point_grids,
    mask_to_rle,
    masks_to_boxes,
    near_crop_edge,
    nms,
    stability_score,
    uncrop_masks,
)


@dataclass(frozen=True)
class AMGSettings:
    """Generator parameters; defaults equal the official generator's."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class MaskGenerator:
    """model: any registry model (SAM family); settings: AMGSettings; point_grids: optional
    explicit grids (one float (N,2) array in [0, 1] per crop layer) instead of points_per_side.
    encoder_batch_size: crops per encoder call."""

    def __init__(self, model: nn.Module, settings: AMGSettings | None = None,
                 point_grids: list[np.ndarray] | None = None, encoder_batch_size: int = 4
                 ) -> None:
        self.model = model.eval()
        self.settings = settings or AMGSettings()
        s = self.settings
        if s.min_mask_region_area > 0:
            raise ValueError("expected min_mask_region_area 0: small-region cleanup is not "
                             f"implemented yet, got {s.min_mask_region_area}")
        if point_grids is not None:
            if len(point_grids) != s.crop_n_layers + 1:
                raise ValueError(f"expected {s.crop_n_layers + 1} point grids (crop_n_layers "
                                 f"+ 1), got {len(point_grids)}")
            self.grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        else:
            self.grids = layer_point_grids(s.points_per_side, s.crop_n_layers,
                                           s.crop_n_points_downscale_factor)
        self.encoder_batch_size = encoder_batch_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray]) -> list[list[dict]]:
        """RGB uint8 HxWx3 images -> per image, a list of SA-1B annotation dicts (without
        `id`): segmentation (COCO RLE), bbox XYWH, area, predicted_iou, stability_score,
        point_coords [[x, y]], crop_box XYWH."""
        s = self.settings
        # Crops of every image: (image index, crop box, layer)
        jobs = []
        for i, image in enumerate(images):
            check_image(image)
            boxes, layers = crop_boxes(image.shape[:2], s.crop_n_layers, s.crop_overlap_ratio)
            jobs += [(i, box, layer) for box, layer in zip(boxes, layers, strict=True)]
        per_image: list[list[dict]] = [[] for _ in images]
        for start in range(0, len(jobs), self.encoder_batch_size):
            chunk = jobs[start : start + self.encoder_batch_size]
            crops = [images[i][y0:y1, x0:x1] for i, (x0, y0, x1, y1), _ in chunk]
            prepared = [self.model.prepare_image(c) for c in crops]
            pixels = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p, _ in prepared])
            embeddings = self.model.embed_images(pixels.to(self.device),
                                                 [hw for _, hw in prepared])
            for k, (i, box, layer) in enumerate(chunk):
                found = self._process_crop(embeddings[k : k + 1], crops[k].shape[:2], box,
                                           layer, images[i].shape[:2])
                per_image[i].append(found)
        return [self._merge(parts, image.shape[:2]) for parts, image in zip(per_image, images,
                                                                            strict=True)]

    def _process_crop(self, embedding: torch.Tensor, crop_hw: tuple[int, int], box: list[int],
                      layer: int, orig_hw: tuple[int, int]) -> dict:
        s, model = self.settings, self.model
        h, w = crop_hw
        new_h, new_w = longest_side_shape(h, w, model.prompt_size)
        points = self.grids[layer] * np.array([[w, h]], dtype=np.float64)  # crop pixels
        masks, ious, scores, pts = [], [], [], []
        for start in range(0, len(points), s.points_per_batch):
            batch = points[start : start + s.points_per_batch]
            # Into the prompt frame, in float64 as the official transform
            coords = batch.copy()
            coords[:, 0] *= new_w / w
            coords[:, 1] *= new_h / h
            coords_t = torch.as_tensor(coords, device=self.device)[:, None, :]
            labels = torch.ones((len(batch), 1), dtype=torch.int, device=self.device)
            low_res, iou = model.decode(embedding, point_coords=coords_t, point_labels=labels,
                                        multimask_output=True)
            low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)  # (P*3, h, w), (P*3,)
            batch_pts = torch.as_tensor(np.repeat(batch, low_res.shape[0] // len(batch), 0),
                                        device=self.device)
            # Filter by predicted IoU before upscaling
            keep = iou > s.pred_iou_thresh if s.pred_iou_thresh > 0 else torch.ones_like(
                iou, dtype=torch.bool)
            low_res, iou, batch_pts = low_res[keep], iou[keep], batch_pts[keep]
            if not len(iou):
                continue
            logits = model.postprocess_masks(low_res[:, None], crop_hw)[:, 0]  # (M, h, w)
            # Filter by stability
            stab = stability_score(logits, model.mask_threshold, s.stability_score_offset)
            keep = stab >= s.stability_score_thresh if s.stability_score_thresh > 0 else \
                torch.ones_like(stab, dtype=torch.bool)
            binary = logits[keep] > model.mask_threshold
            iou, stab, batch_pts = iou[keep], stab[keep], batch_pts[keep]
            # Drop masks touching an inner crop edge
            boxes = masks_to_boxes(binary)
            keep = ~near_crop_edge(boxes, box, [0, 0, orig_hw[1], orig_hw[0]])
            masks.append(binary[keep])
            ious.append(iou[keep])
            scores.append(stab[keep])
            pts.append(batch_pts[keep])
        if not masks:
            return {"masks": torch.zeros(0, h, w, dtype=torch.bool), "boxes": torch.zeros(0, 4),
                    "iou": torch.zeros(0), "stability": torch.zeros(0),
                    "points": torch.zeros(0, 2), "crop_box": box}
        binary, iou = torch.cat(masks), torch.cat(ious)
        stab, pts = torch.cat(scores), torch.cat(pts)
        boxes = masks_to_boxes(binary)
        # NMS within the crop
        keep = nms(boxes.float(), iou, s.box_nms_thresh)
        offset = torch.tensor([box[0], box[1]], device=boxes.device)
        return {"masks": binary[keep], "boxes": boxes[keep] + offset.repeat(2),
                "iou": iou[keep], "stability": stab[keep], "points": pts[keep] + offset,
                "crop_box": box}

    def _merge(self, parts: list[dict], orig_hw: tuple[int, int]) -> list[dict]:
        boxes = torch.cat([p["boxes"].to(self.device) for p in parts])
        crop_of = [k for k, p in enumerate(parts) for _ in range(len(p["boxes"]))]
        order = torch.arange(len(crop_of))
        if len(parts) > 1 and len(crop_of):
            # NMS across crops: prefer masks from smaller crops
            crops = torch.tensor([parts[k]["crop_box"] for k in crop_of], dtype=torch.float,
                                 device=self.device)
            order = nms(boxes.float(), 1 / box_area(crops), self.settings.crop_nms_thresh).cpu()
        offsets = np.cumsum([0] + [len(p["boxes"]) for p in parts])
        out = []
        for idx in order.tolist():
            k = crop_of[idx]
            j = idx - offsets[k]
            part = parts[k]
            mask = uncrop_masks(part["masks"][j : j + 1], part["crop_box"], orig_hw)[0]
            rle = mask_to_rle(mask.cpu().numpy())
            x0, y0, x1, y1 = (int(v) for v in boxes[idx].tolist())
            cx0, cy0, cx1, cy1 = part["crop_box"]
            out.append({
                "segmentation": rle,
                "area": int(mask.sum().item()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(part["iou"][j].item()),
                "point_coords": [[float(v) for v in part["points"][j].tolist()]],
                "stability_score": float(part["stability"][j].item()),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        return out
