"""EfficientSAM (ViT-Tiny, ViT-Small): a plain ViT image encoder pretrained with SAMI (masked
images reconstructing SAM features), with a SAM-style prompt encoder and mask decoder that
differ from SAM's in the details below.

Image pipeline (official `EfficientSam.preprocess`), different from SAM's:

- the image is divided by 255 (float32, 0..1) and STRETCHED to 1024x1024 with bilinear
  interpolation (align_corners=False, no antialias): no aspect kept, no padding. Here the
  resize runs on the CPU in `prepare_image`, which therefore returns float32 0..1;
- ImageNet mean/std on 0..1 values; the whole square is image (input_hw = (1024, 1024));
- prompts are scaled to the stretched frame (x * 1024 / W, y * 1024 / H); low-res masks are
  resized bicubic straight to the original size.

Encoder: 16x16 patches, a learned absolute position table of the 224-pixel pretraining (14x14
plus a class-token slot, resized bicubic to 64x64 on every call), 12 pre-norm ViT blocks with
global attention (LayerNorm eps 1e-6, exact GELU), then SAM's neck (1x1 conv, LayerNorm2d, 3x3
conv, LayerNorm2d) to a Bx256x64x64 embedding.

Prompts: only points; a box is two corner points with labels 2 and 3. The decoder always sees
exactly 6 point tokens: fewer are padded with (-1, -1) and label -1, more are cut to the first 6.
Every point keeps its Fourier position encoding; label -1 adds the `invalid_points` embedding,
1 `point_embeddings`, 2 and 3 the box-corner embeddings, and 0 (background) adds nothing (there
is no negative-point embedding). There is no mask prompt and no dense (no-mask) embedding.

Decoder, unlike SAM's: GELU everywhere (the MLPs of the transformer, hypernetworks and IoU head
too); in the two-way blocks the first self-attention keeps its residual and the later ones add
the query positional encoding to the residual stream itself; the upscaling path normalises with
GroupNorm(1, 64); LayerNorm eps 1e-5. Single-mask output (`multimask_output=False`) is the first
mask token, as in SAM and the official decoder.

Module and parameter names equal the official state dicts, so `efficient_sam_vitt.pt` and
`efficient_sam_vits.pt` (`{"model": state_dict}`) load with `strict=True`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, PromptModelProperties
from .prompt_encoder import PositionEmbeddingRandom
from .transformer import TwoWayAttentionBlock
from .transformer import TwoWayTransformer as SamTwoWayTransformer
from .transforms import check_image

IMAGE_SIZE = 1024  # the stretched square the encoder sees and the prompt frame
PATCH_SIZE = 16
PRETRAIN_GRID = 224 // PATCH_SIZE  # the position table was learned at 224x224 (+ a cls slot)
EMBED_DIM = 256  # embedding channels, prompt tokens and decoder width
MAX_POINTS = 6  # point tokens per prompt the decoder always gets (padded or cut)
ENCODER_NORM_EPS = 1e-6  # the ViT blocks' LayerNorms and the neck's LayerNorm2d
DECODER_NORM_EPS = 1e-5  # the two-way transformer's LayerNorms (torch's default)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on 0..1 RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
# Point labels of the official decoder
LABEL_PAD = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


# -- image encoder ------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patches: Bx3xSxS -> BxCx(S/p)x(S/p)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SelfAttention(nn.Module):
    """Global multi-head self-attention with a fused qkv projection: BxNxC -> BxNxC."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"expected num_heads to divide {dim}, got num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, c)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as the official
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FeedForward(nn.Module):
    """Linear, exact GELU, linear: ...xC -> ...xH -> ...xC."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); BxNxC."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ENCODER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=ENCODER_NORM_EPS)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """1x(1+g*g)xC learned table (class slot first, then a gxg grid) -> float32 1xgridxgridxC,
    resized bicubic (align_corners=False) when g != grid; the class slot is dropped."""
    cells = table[:, 1:].float()
    g = int(round(cells.shape[1] ** 0.5))
    if g * g != cells.shape[1]:
        raise ValueError(f"expected a square position grid, got {cells.shape[1]} cells")
    cells = cells.reshape(1, g, g, -1)
    if g == grid:
        return cells
    with torch.autocast(table.device.type, enabled=False):
        resized = F.interpolate(cells.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                                align_corners=False)
    return resized.permute(0, 2, 3, 1)


class EfficientSamEncoder(nn.Module):
    """Normalised Bx3x`img_size`x`img_size` float image -> Bx`out_dim`x(S/16)x(S/16) embedding
    (float32, or the autocast dtype)."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        img_size: int = IMAGE_SIZE,
        patch_size: int = PATCH_SIZE,
        mlp_ratio: float = 4.0,
        out_dim: int = EMBED_DIM,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, PRETRAIN_GRID**2 + 1, embed_dim))
        self.blocks = nn.ModuleList(ViTBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_dim, kernel_size=1, bias=False),
            LayerNorm2d(out_dim, eps=ENCODER_NORM_EPS),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_dim, eps=ENCODER_NORM_EPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(f"expected Bx3x{self.img_size}x{self.img_size} images, "
                             f"got {tuple(x.shape)}")
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, g, g, C)
        x = x + resize_position_table(self.pos_embed, self.grid)
        b, g, _, c = x.shape
        x = x.reshape(b, g * g, c)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.reshape(b, g, g, c).permute(0, 3, 1, 2))  # (B, out_dim, g, g)


# -- prompt encoder and mask decoder ------------------------------------------------------------


class GeluMLP(nn.Module):
    """`num_layers` hidden Linear+GELU layers (`layers.i.0`), then a linear output (`fc`):
    ...xIn -> ...xOut."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden_dim), nn.GELU()) for d in dims_in
        )
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


class TwoWayBlock(TwoWayAttentionBlock):
    """EfficientSAM's two-way block: SAM's (token self-attention, tokens -> image, token MLP,
    image -> tokens; each a residual add then LayerNorm) with a GELU MLP, and a different
    self-attention step: the first block keeps its residual, and from the second block on the
    query encoding is added to the token stream before self-attention (so it stays in the
    residual)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
        norm_eps: float = DECODER_NORM_EPS,
    ) -> None:
        super().__init__(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                         skip_first_layer_pe, norm_eps=norm_eps)
        self.mlp = GeluMLP(embedding_dim, mlp_dim, embedding_dim, num_layers=1)  # same slot

    def self_attention(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        return self.norm1(queries + self.self_attn(q=queries, k=queries, v=queries))


class TwoWayTransformer(SamTwoWayTransformer):
    """SAM's two-way transformer with EfficientSAM's blocks: PxCxhxw image embedding, 1xCxhxw
    positional encoding, PxTxC tokens -> (PxTxC tokens, Px(h*w)xC image tokens)."""

    block_class = TwoWayBlock


class PointPromptEncoder(nn.Module):
    """Labelled points in the prompt frame -> one token each: PxNx2, PxN -> PxNx`embed_dim`.

    Each token is the Fourier encoding of the point's pixel centre plus the embedding of its
    label (-1 padding, 1 foreground, 2/3 box corners; 0 background adds none)."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.invalid_points = nn.Embedding(1, embed_dim)
        self.point_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid's cell centres: float32 1xCxhxw."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def forward(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords float32 PxNx2 (x, y) in the `input_image_size` frame; labels int PxN."""
        tokens = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels[..., None]
        for label, table in (
            (LABEL_PAD, self.invalid_points),
            (LABEL_FOREGROUND, self.point_embeddings),
            (LABEL_BOX_TOP_LEFT, self.bbox_top_left_embeddings),
            (LABEL_BOX_BOTTOM_RIGHT, self.bbox_bottom_right_embeddings),
        ):
            tokens = tokens + table.weight * (labels == label)
        return tokens


class EfficientSamMaskDecoder(nn.Module):
    """Image embeddings + point tokens -> low-res mask logits (4x the embedding grid) and
    predicted IoU, one per mask token (token 0: the single-mask output, 1-3: multimask)."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 2,
        iou_head_hidden_dim: int = 256,
        upscaling_dims: tuple[int, ...] = (64, 32),
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        layers, width = [], transformer_dim
        for i, dim in enumerate(upscaling_dims):
            last = i == len(upscaling_dims) - 1
            layers.append(nn.Sequential(
                nn.ConvTranspose2d(width, dim, kernel_size=2, stride=2),
                nn.Identity() if last else nn.GroupNorm(1, dim),
                nn.GELU(),
            ))
            width = dim
        self.final_output_upscaling_layers = nn.ModuleList(layers)
        self.output_hypernetworks_mlps = nn.ModuleList(
            GeluMLP(transformer_dim, transformer_dim, width, num_layers=2)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = GeluMLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, num_layers=iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings IxCxhxw (I = 1, shared by every prompt, or I dividing P with each
        image's prompts contiguous); image_pe 1xCxhxw; sparse PxNxC.

        Returns float32 logits Px3x(4h)x(4w) and IoU Px3 (Px1 of token 0 if not multimask)."""
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask token: Px4x(4h)x(4w) logits and Px4 IoU."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(num_prompts, -1, -1), sparse_prompt_embeddings],
            dim=1,
        )  # (P, 1 + 4 + N, C)
        # One copy of the image embedding per prompt
        num_images = image_embeddings.shape[0]
        if num_images == 1:
            image_embeddings = image_embeddings.expand(num_prompts, -1, -1, -1)
        elif num_prompts % num_images == 0:
            image_embeddings = torch.repeat_interleave(
                image_embeddings, num_prompts // num_images, dim=0
            )
        else:
            raise ValueError(
                f"expected the prompt count to be a multiple of the image count {num_images}, "
                f"got {num_prompts} prompts"
            )
        b, c, h, w = image_embeddings.shape
        # Run the two-way transformer
        hs, src = self.transformer(image_embeddings, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        # Upscale the image tokens and project them with one hypernetwork per mask token
        upscaled = src.transpose(1, 2).reshape(b, c, h, w)
        for layer in self.final_output_upscaling_layers:
            upscaled = layer(upscaled)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (P, tokens, C_up)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, hyper_in.shape[1], h, w)
        # Predict mask quality
        return masks, self.iou_prediction_head(iou_token_out)


# -- the model ----------------------------------------------------------------------------------


class EfficientSam(PromptModelProperties, nn.Module):
    """EfficientSAM with the SAM-family protocol of `models.sam.Sam` (see models/sam.py), so
    pipelines and the predictor use it unchanged; only the pre- and post-processing differ
    (stretch to a float square, no padding, bicubic upscaling)."""

    mask_threshold: float = 0.0
    checkpoint_wrappers: tuple[str, ...] = ("model",)  # official files are {"model": sd}

    def __init__(
        self,
        image_encoder: EfficientSamEncoder,
        prompt_encoder: PointPromptEncoder,
        mask_decoder: EfficientSamMaskDecoder,
        max_points: int = MAX_POINTS,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.max_points = max_points
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.image_size = image_encoder.img_size
        self.prompt_size = prompt_encoder.input_image_size[0]

    # -- images -------------------------------------------------------------------------------

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """(S, S) for any image: the stretched image fills the encoder's square."""
        return (self.image_size, self.image_size)

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (float32 SxSx3 in 0..1, (S, S)).

        As the official preprocessing: divide by 255 in float32, then stretch to SxS with
        bilinear interpolation (align_corners=False, no antialias); an SxS image is not
        resampled. Runs on the CPU."""
        check_image(image)
        # astype copies (decoded images may be read-only); uint8 -> float32 is exact
        x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).contiguous()
        x = x[None].div(255)  # (1, 3, H, W), 0..1
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        return x[0].permute(1, 2, 0).contiguous().numpy(), (size, size)

    def normalize(
        self, images: torch.Tensor, input_hws: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """float Bx3xSxS in 0..1 (as `prepare_image` makes; uint8 0..255 is divided by 255
        first) -> float32 Bx3xSxS, (x - mean) / std. Images of another size are stretched to
        SxS bilinear first, as the official model does. input_hws is ignored: no padding."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images Bx3xHxW, got {tuple(images.shape)}")
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    def embed_images(
        self, images: torch.Tensor, input_hws: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prepared float Bx3xSxS images (0..1) -> image embeddings Bx256x64x64."""
        return self.image_encoder(self.normalize(images, input_hws))

    # -- prompts ------------------------------------------------------------------------------

    def transform_coords(self, coords: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """...x2 (x, y) pixel coordinates of the original image -> float64 ...x2 in the
        stretched SxS prompt frame: x * S / W, y * S / H. A negative coordinate becomes -1 (the
        official "no point" value, also used for padding)."""
        coords = coords.to(torch.float64)
        size = self.prompt_size
        x = torch.where(coords[..., 0] >= 0, coords[..., 0] * size / orig_hw[1], -1.0)
        y = torch.where(coords[..., 1] >= 0, coords[..., 1] * size / orig_hw[0], -1.0)
        return torch.stack([x, y], dim=-1)

    def transform_boxes(self, boxes: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Bx4 XYXY boxes of the original image -> float64 Bx4 in the prompt frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), orig_hw).reshape(-1, 4)

    def _point_tokens(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (as corner points, labels 2 and 3) then points, padded with (-1, -1) / label
        -1 or cut to `max_points`: float32 PxMx2, int64 PxM."""
        coords, labels = [], []
        if boxes is not None:
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"expected boxes Px4 (XYXY), got {tuple(boxes.shape)}")
            coords.append(boxes.float().reshape(-1, 2, 2))
            corner = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT],
                                  device=boxes.device)
            labels.append(corner.expand(boxes.shape[0], 2))
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("expected point_labels with point_coords, got None")
            if (point_coords.dim() != 3 or point_coords.shape[-1] != 2
                    or tuple(point_labels.shape) != tuple(point_coords.shape[:2])):
                raise ValueError(
                    "expected point_coords PxNx2 and point_labels PxN, got "
                    f"{tuple(point_coords.shape)} and {tuple(point_labels.shape)}"
                )
            coords.append(point_coords.float())
            labels.append(point_labels.long())
        if not coords:
            raise ValueError("expected point_coords or boxes, got neither")
        if len({c.shape[0] for c in coords}) > 1:
            raise ValueError(f"expected as many boxes as point prompts, got {boxes.shape[0]} "
                             f"boxes and {point_coords.shape[0]} point prompts")
        xy, lab = torch.cat(coords, dim=1), torch.cat(labels, dim=1)
        n = xy.shape[1]
        if n > self.max_points:  # the official decoder keeps the first ones
            xy, lab = xy[:, : self.max_points], lab[:, : self.max_points]
        elif n < self.max_points:
            xy = F.pad(xy, (0, 0, 0, self.max_points - n), value=-1.0)
            lab = F.pad(lab, (0, self.max_points - n), value=LABEL_PAD)
        return xy, lab

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the prompt frame: PxNx2 coords with PxN labels (1 foreground,
        0 background) and/or Px4 XYXY boxes; image_embeddings Ix256x64x64 (I = 1 or I divides
        P).

        Each prompt becomes at most 6 point tokens: its box's two corners (labels 2, 3) first,
        then its points; fewer are padded with (-1, -1) / label -1, more are cut to the first
        6, as the official `predict_masks`. mask_input is not supported (EfficientSAM has no
        mask prompt). multimask_output=False gives the official single-mask output, mask
        token 0.

        Returns float32 low-res logits PxCx256x256 and IoU predictions PxC (C = 3 or 1)."""
        if mask_input is not None:
            raise ValueError(
                "EfficientSAM has no mask prompt: expected mask_input=None, got a tensor of "
                f"shape {tuple(mask_input.shape)}"
            )
        coords, labels = self._point_tokens(point_coords, point_labels, boxes)
        sparse = self.prompt_encoder(coords, labels)  # (P, 6, C)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            multimask_output=multimask_output,
        )

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits BxCxhxw -> BxCxHxW logits at orig_hw: one bicubic resize
        (align_corners=False), as the official model (no crop: nothing was padded)."""
        return F.interpolate(masks, tuple(orig_hw), mode="bicubic", align_corners=False)


# -- builders -----------------------------------------------------------------------------------


def _build(embed_dim: int, num_heads: int) -> EfficientSam:
    """The official configuration around a ViT of width `embed_dim` (depth 12, 16x16 patches,
    1024 input; decoder: 2 two-way blocks, 8 heads, MLP 2048, upscaling 64 -> 32)."""
    grid = IMAGE_SIZE // PATCH_SIZE
    return EfficientSam(
        image_encoder=EfficientSamEncoder(embed_dim=embed_dim, depth=12, num_heads=num_heads),
        prompt_encoder=PointPromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        ),
        mask_decoder=EfficientSamMaskDecoder(
            transformer_dim=EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8,
                                          mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=2,
            iou_head_hidden_dim=256,
            upscaling_dims=(64, 32),
        ),
    )


def build_efficient_sam_vitt() -> EfficientSam:
    """EfficientSAM-Ti (ViT-Tiny encoder: width 192, 3 heads; 10.2M parameters), official
    file efficient_sam_vitt.pt."""
    return _build(embed_dim=192, num_heads=3)


def build_efficient_sam_vits() -> EfficientSam:
    """EfficientSAM-S (ViT-Small encoder: width 384, 6 heads; 26.4M parameters), official
    file efficient_sam_vits.pt (shipped zipped)."""
    return _build(embed_dim=384, num_heads=6)


BUILDERS = {
    "efficient_sam_vitt": build_efficient_sam_vitt,
    "efficient_sam_vits": build_efficient_sam_vits,
}

# Official checkpoint file names (yformer/EfficientSAM, weights/).
OFFICIAL_FILES = {
    "efficient_sam_vitt": "efficient_sam_vitt.pt",
    "efficient_sam_vits": "efficient_sam_vits.pt",
}
