"""A small predictor usable without Ray: embed images, then prompt them.

    predictor = Predictor(build_model("sam_vit_b", checkpoint="sam_vit_b_01ec64.pth"))
    emb = predictor.embed([img_a, img_b])                 # 2x256x64x64 float32
    out = predictor.predict(emb[0], img_a.shape[:2], point_coords=[[500, 375]], point_labels=[1])
    out["masks"]  # 1x3xHxW logits at the original size

SAM 2 (a HighResPromptableModel) decodes from the high-res features of the image too: `embed`
keeps those of the images it embedded last, and `predict` takes them for an embedding of that
call (or `high_res_features=` given explicitly).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from .protocols import HighResPromptableModel
from .transforms import check_image

# model.precision values that run under autocast, and their dtypes
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Predictor:
    """Wraps a registry model (any SAM-family model) for direct use.

    device: where to run (default: the model's device).
    precision: "fp32" (the official numbers), or "bf16"/"fp16" autocast for the image encoder.
    """

    def __init__(
        self, model: nn.Module, device: str | torch.device | None = None, precision: str = "fp32"
    ) -> None:
        if precision not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"expected precision fp32, bf16 or fp16, got '{precision}'")
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self.precision = precision
        # SAM 2: the last embed call's embeddings and high-res features (see the module doc)
        self._features: dict | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 images of any sizes -> float32 Bx256x64x64 embeddings (one encoder
        call for the whole list)."""
        if not len(images):
            raise ValueError("expected at least one image, got an empty list")
        prepared, input_hws = [], []
        for i, image in enumerate(images):
            try:
                check_image(image)
            except (TypeError, ValueError) as e:
                raise type(e)(f"image {i}: {e}") from e
            padded, input_hw = self.model.prepare_image(image)
            prepared.append(torch.from_numpy(padded).permute(2, 0, 1))
            input_hws.append(input_hw)
        batch = torch.stack(prepared).to(self.device)  # (B, 3, S, S) uint8
        with self._autocast():
            if isinstance(self.model, HighResPromptableModel):
                feats = self.model.embed_images_with_features(batch, input_hws)
                embeddings = feats["image_embed"].float()
                self._features = {"image_embed": embeddings,
                                  "high_res_feats": [f.float() for f in feats["high_res_feats"]]}
                return embeddings
            embeddings = self.model.embed_images(batch, input_hws)
        return embeddings.float()

    def _high_res_features(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """The high-res features kept by `embed` for `embedding` (1xCxhxw, one of its rows)."""
        if self._features is not None:
            for i, row in enumerate(self._features["image_embed"]):
                if row.shape == embedding.shape[1:] and torch.equal(row, embedding[0].to(
                        row.device, row.dtype)):
                    return [f[i : i + 1] for f in self._features["high_res_feats"]]
        raise ValueError("expected an embedding of this predictor's last embed call or "
                         "high_res_features (SAM 2's decoder needs them), got neither")

    @torch.inference_mode()
    def predict(
        self,
        embedding: torch.Tensor,
        orig_hw: tuple[int, int],
        point_coords: np.ndarray | list | None = None,
        point_labels: np.ndarray | list | None = None,
        boxes: np.ndarray | list | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = True,
        return_logits: bool = True,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prompt one image's embedding (256x64x64 or 1x256x64x64).

        point_coords: Nx2 or PxNx2 (x, y) in original-image pixels; point_labels: N or PxN
            (1 foreground, 0 background); boxes: 4 or Px4 XYXY in original pixels;
            mask_input: Px1x256x256 low-res logits from an earlier call;
            high_res_features: SAM 2 only, the image's [1x32x256x256, 1x64x128x128] (default:
            those `embed` kept for this embedding).
        Returns "masks" PxCxHxW at orig_hw (float logits, or bool when not return_logits),
        "iou_predictions" PxC and "low_res_logits" PxCx256x256, C = 3 if multimask else 1.
        """
        model = self.model
        device = self.device
        if embedding.dim() == 3:
            embedding = embedding[None]
        expected = model.embedding_shape
        if tuple(embedding.shape[1:]) != tuple(expected) or embedding.shape[0] != 1:
            raise ValueError(
                f"expected one embedding of shape {expected}, got {tuple(embedding.shape)}"
            )
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError("expected at least one prompt (points, boxes or mask_input), got none")
        coords = labels = box = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("expected point_labels with point_coords, got None")
            coords = torch.as_tensor(np.asarray(point_coords, dtype=np.float64), device=device)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=device)
            if coords.dim() == 2:
                coords, labels = coords[None], labels[None]
            if coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    "expected point_coords PxNx2 and point_labels PxN, got "
                    f"{tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            coords = model.transform_coords(coords, orig_hw).float()
        if boxes is not None:
            box = torch.as_tensor(np.asarray(boxes, dtype=np.float64), device=device)
            if box.shape[-1] != 4:
                raise ValueError(f"expected boxes Px4 (XYXY), got {tuple(box.shape)}")
            box = model.transform_boxes(box.reshape(-1, 4), orig_hw).float()
        if mask_input is not None:
            mask_input = mask_input.to(device=device, dtype=torch.float)
        extra = {}
        if isinstance(model, HighResPromptableModel):
            if high_res_features is None:
                high_res_features = self._high_res_features(embedding)
            extra["high_res_features"] = [f.to(device=device, dtype=torch.float)
                                          for f in high_res_features]
        low_res, iou = model.decode(
            embedding.to(device=device, dtype=torch.float),
            point_coords=coords,
            point_labels=labels,
            boxes=box,
            mask_input=mask_input,
            multimask_output=multimask,
            **extra,
        )
        masks = model.postprocess_masks(low_res, orig_hw)
        if not return_logits:
            masks = masks > model.mask_threshold
        return {"masks": masks, "iou_predictions": iou, "low_res_logits": low_res}
