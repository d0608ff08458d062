"""FastSAM: a YOLOv8-seg instance segmenter with one class ("object"), run in everything mode.

The network is Ultralytics' YOLOv8-seg (the 8.0.120 source that FastSAM vendors), built from
yolov8-seg.yaml with nc=1:

- backbone: five stride-2 Conv (conv 3x3, BatchNorm, SiLU) with a C2f after four of them (CSP:
  a 1x1 conv split in two halves, n residual 3x3+3x3 bottlenecks chained on the second half,
  every intermediate concatenated into a 1x1 conv), then SPPF (three chained 5x5 max pools)
  -> P3 (stride 8), P4 (16), P5 (32);
- neck (PAN): nearest x2 upsample + concat + C2f (no residuals) top-down to P4 and P3, then
  stride-2 Conv + concat + C2f bottom-up to P4 and P5;
- Segment head on the three levels: per level a box branch (two 3x3 Conv, 1x1 conv to 4x16
  distance bins), a class branch (-> 1 logit) and a mask-coefficient branch (-> 32); boxes
  decode as the expectation over 16 bins (DFL) of the distances from each cell centre to the
  four sides, times the stride; Proto makes 32 prototypes at stride 4 from P3.

Channels are the yaml's times the width multiple, capped at max_channels first and rounded up to
a multiple of 8; repeats are max(round(n * depth), 1) (Python rounding). FastSAM-x is the `x`
scale (depth 1.0, width 1.25, max 512), FastSAM-s the `s` scale (0.33, 0.50, 1024). Every
BatchNorm has eps 1e-3 and momentum 0.03 (Ultralytics' initialize_weights). Module names equal
the official `SegmentationModel` (`model.0.conv.weight`, ..., `model.22.proto.cv3.bn.bias`), so
an official state dict loads with `strict=True`.

This module holds the network and its official pre- and post-processing (`letterbox_geometry`,
`letterbox`, `scale_boxes_to_original`, `masks_native`); FastSAM's everything mode (candidate
selection, NMS, box snapping) is operators/everything/one_pass.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ultralytics_checkpoint import load_ultralytics_state_dict

BN_EPS = 1e-3  # every BatchNorm2d of the official model (initialize_weights)
BN_MOMENTUM = 0.03
REG_MAX = 16  # distance bins per box side (DFL)
NUM_MASKS = 32  # prototypes, and mask coefficients per detection
STRIDES = (8, 16, 32)  # of the P3, P4, P5 outputs
STRIDE = STRIDES[-1]  # input sides must be multiples of this
PAD_VALUE = 114  # letterbox border, in uint8 levels
# Mask logits are returned as logit(p) with p clamped to [1e-6, 1 - 1e-6] (torch.logit's eps):
# a pixel outside its box (p = 0) gets -MASK_LOGIT_BOUND.
MASK_LOGIT_EPS = 1e-6
MASK_LOGIT_BOUND = math.log((1.0 - MASK_LOGIT_EPS) / MASK_LOGIT_EPS)  # 13.8155


def _channels(c: int, width: float, max_channels: int) -> int:
    """The yaml's channel count scaled: min(c, max_channels) * width rounded up to 8."""
    return math.ceil(min(c, max_channels) * width / 8) * 8


def _repeats(n: int, depth: float) -> int:
    """The yaml's repeat count scaled (Python's round, half to even, as the official)."""
    return max(round(n * depth), 1) if n > 1 else n


# -- layers -------------------------------------------------------------------------------------


class Conv(nn.Module):
    """Conv2d ("same" padding, no bias), BatchNorm2d, SiLU: float BxCinxHxW ->
    BxCoutx(H/stride)x(W/stride)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Conv, with a residual when `shortcut`: BxCxHxW -> BxCxHxW."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 3)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block: 1x1 Conv to 2c channels split in halves (a, b); n bottlenecks chained on b;
    [a, b, each bottleneck output] concatenated into a 1x1 Conv: BxCinxHxW -> BxCoutxHxW,
    c = Cout / 2."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    """1x1 Conv to Cin/2, three chained 5x5 stride-1 max pools, the four maps concatenated
    into a 1x1 Conv: BxCinxHxW -> BxCoutxHxW."""

    def __init__(self, c_in: int, c_out: int, pool: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden)
        self.cv2 = Conv(4 * hidden, c_out)
        self.m = nn.MaxPool2d(pool, stride=1, padding=pool // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [self.cv1(x)]
        for _ in range(3):
            maps.append(self.m(maps[-1]))
        return self.cv2(torch.cat(maps, 1))


class Concat(nn.Module):
    """Channel concatenation of a list of BxCixHxW tensors (no weights; it keeps the official
    layer numbering)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class DFL(nn.Module):
    """Box side from 16 distance bins: softmax over the bins, then the 1x1 conv whose weight is
    the bin values 0..15 (a checkpoint tensor, fixed at arange): Bx64xA -> Bx4xA."""

    def __init__(self, bins: int = REG_MAX) -> None:
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        probs = x.view(b, 4, self.bins, a).transpose(1, 2).softmax(1)  # (B, bins, 4, A)
        return self.conv(probs).view(b, 4, a)


class Proto(nn.Module):
    """Mask prototypes from P3: 3x3 Conv, 2x2 stride-2 transposed conv, 3x3 Conv, 1x1 Conv:
    BxCxHxW -> Bx32x2Hx2W (stride 4 of the input)."""

    def __init__(self, c_in: int, hidden: int, num_masks: int = NUM_MASKS) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, hidden, 3)
        self.upsample = nn.ConvTranspose2d(hidden, hidden, 2, 2, 0, bias=True)
        self.cv2 = Conv(hidden, hidden, 3)
        self.cv3 = Conv(hidden, num_masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


def _branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Two 3x3 Conv and a 1x1 Conv2d with bias: one head branch of one level."""
    return nn.Sequential(
        Conv(c_in, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1)
    )


def _run_levels(branches: nn.ModuleList, feats: list[torch.Tensor]) -> torch.Tensor:
    """One branch per level, outputs flattened and joined: BxCxA, P3 anchors first."""
    b = feats[0].shape[0]
    return torch.cat([m(f).view(b, -1, f.shape[2] * f.shape[3])
                      for m, f in zip(branches, feats, strict=True)], 2)


def make_anchors(
    hws: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (x + 0.5, y + 0.5 in grid units, raster order, level after level) and the
    stride of each: float Ax2, float Ax1, A = sum h*w."""
    points, strides = [], []
    for (h, w), stride in zip(hws, STRIDES, strict=True):
        xs = torch.arange(w, dtype=dtype, device=device) + 0.5
        ys = torch.arange(h, dtype=dtype, device=device) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        strides.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(points), torch.cat(strides)


class SegmentHead(nn.Module):
    """YOLOv8's Segment head (eval mode) on P3, P4, P5 (channels `ch`).

    Returns preds float Bx(4+nc+32)xA: box centre x, y, width, height in input pixels, class
    probabilities (sigmoid), raw mask coefficients; A = sum over levels of h*w anchors (P3
    first, raster order); and protos float Bx32x(H/4)x(W/4)."""

    def __init__(self, nc: int, proto_channels: int, ch: tuple[int, int, int]) -> None:
        super().__init__()
        self.nc = nc
        box_hidden = max(16, ch[0] // 4, 4 * REG_MAX)
        cls_hidden = max(ch[0], nc)
        mask_hidden = max(ch[0] // 4, NUM_MASKS)
        # Registration order = official state-dict order: cv2, cv3, dfl, proto, cv4.
        self.cv2 = nn.ModuleList(_branch(c, box_hidden, 4 * REG_MAX) for c in ch)
        self.cv3 = nn.ModuleList(_branch(c, cls_hidden, nc) for c in ch)
        self.dfl = DFL(REG_MAX)
        self.proto = Proto(ch[0], proto_channels, NUM_MASKS)
        self.cv4 = nn.ModuleList(_branch(c, mask_hidden, NUM_MASKS) for c in ch)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        protos = self.proto(feats[0])
        coeffs = _run_levels(self.cv4, feats)  # (B, 32, A)
        box = _run_levels(self.cv2, feats)  # (B, 64, A)
        cls = _run_levels(self.cv3, feats)  # (B, nc, A)
        # Box decoding, scores and coefficients in float32 even under autocast: bf16 would
        # round box sides to 4 px above 512 and scores to ~0.004 (the official runs fp32).
        with torch.autocast(box.device.type, enabled=False):
            box, cls, coeffs = box.float(), cls.float(), coeffs.float()
            anchors, strides = make_anchors([f.shape[2:] for f in feats], torch.float32,
                                            box.device)
            anchors, strides = anchors.T.unsqueeze(0), strides.T  # (1, 2, A), (1, A)
            lt, rb = self.dfl(box).chunk(2, 1)  # distances to the sides, grid units
            top_left, bottom_right = anchors - lt, anchors + rb
            xywh = torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), 1)
            return torch.cat((xywh * strides, cls.sigmoid(), coeffs), 1), protos.float()


# -- preprocessing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image of `orig_hw` sits in the network input of `input_hw`: resized to
    `resized_hw`, `top` / `left` rows / columns of padding before it."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_hw: tuple[int, int]
    top: int
    left: int


def input_size(imgsz: int) -> int:
    """The official predictor's input size: `imgsz` rounded up to a multiple of 32."""
    if not isinstance(imgsz, (int, np.integer)) or isinstance(imgsz, bool) or imgsz <= 0:
        raise ValueError(f"expected imgsz a positive int, got {imgsz!r}")
    return math.ceil(int(imgsz) / STRIDE) * STRIDE


def letterbox_geometry(orig_hw: tuple[int, int], imgsz: int = 1024) -> LetterboxGeometry:
    """The official predictor's letterbox for one image (Ultralytics LetterBox with auto=True,
    as the predictor uses for a single image or a batch of one shape; scaleup, stride 32).

    Scale r = min(S / h, S / w) for S = `input_size(imgsz)`; resized size
    (round(h r), round(w r)) (Python rounding); the padding is only what the resized size lacks
    to the next multiple of 32 (so a 4:3 image gets a 4:3-ish input, not S x S), split with
    top = round(d / 2 - 0.1), bottom = round(d / 2 + 0.1) (left / right alike)."""
    h, w = orig_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"expected a non-empty image, got size {h}x{w}")
    side = input_size(imgsz)
    r = min(side / h, side / w)
    # at least one pixel a side (an image over 2*imgsz:1 would round to 0 and crash)
    new_h, new_w = max(1, int(round(h * r))), max(1, int(round(w * r)))
    dh, dw = ((side - new_h) % STRIDE) / 2, ((side - new_w) % STRIDE) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return LetterboxGeometry(
        orig_hw=(h, w),
        resized_hw=(new_h, new_w),
        input_hw=(new_h + top + bottom, new_w + left + right),
        top=top,
        left=left,
    )


def letterbox(image: torch.Tensor, geom: LetterboxGeometry) -> torch.Tensor:
    """Resize and pad one image as the official LetterBox: uint8 3xHxW (any device) -> float32
    3xhxw on the same device, holding integer levels 0..255 (the uint8 letterboxed image, not
    yet divided by 255), `PAD_VALUE` around the resized image.

    The resize is the official one, cv2.resize(INTER_LINEAR) on the uint8 HxWx3 image, done on
    the CPU as the official preprocessing does: the network input is byte-identical to the
    official LetterBox's (torch's bilinear differs from OpenCV's 11-bit fixed-point weights by
    one level on ~10% of values, enough to change detections)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected uint8 3xHxW, got {image.dtype} {tuple(image.shape)}")
    if tuple(image.shape[1:]) != geom.orig_hw:
        raise ValueError(f"expected an image of {geom.orig_hw}, got {tuple(image.shape[1:])}")
    (h, w), top, left = geom.resized_hw, geom.top, geom.left
    resized = image
    if (h, w) != geom.orig_hw:
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())  # HxWx3 uint8
        hwc = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)  # hxwx3 uint8
        resized = torch.from_numpy(hwc).to(image.device).permute(2, 0, 1)
    out = torch.full((3, *geom.input_hw), float(PAD_VALUE), device=image.device)
    out[:, top : top + h, left : left + w] = resized
    return out


# -- post-processing ----------------------------------------------------------------------------


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    """Nx4 centre x, y, width, height -> Nx4 x1, y1, x2, y2."""
    cx, cy, w, h = xywh.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def scale_boxes_to_original(boxes: torch.Tensor, geom: LetterboxGeometry) -> torch.Tensor:
    """Input-pixel XYXY boxes to original-image pixels, as the official scale_boxes: gain
    g = min(h_in / h, w_in / w) and padding round(d / 2 - 0.1) recomputed from the two shapes,
    (box - pad) / g, clipped to [0, W] x [0, H]. float Kx4 -> float Kx4."""
    (ih, iw), (h, w) = geom.input_hw, geom.orig_hw
    gain = min(ih / h, iw / w)
    pad_x, pad_y = round((iw - w * gain) / 2 - 0.1), round((ih - h * gain) / 2 - 0.1)
    out = (boxes - boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])) / gain
    limits = boxes.new_tensor([w, h, w, h], dtype=boxes.dtype)
    return torch.minimum(out.clamp(min=0), limits)


def prototype_logits(protos: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Mask logits at prototype resolution: coefficients @ prototypes, in float32 (also under
    autocast). protos float 32xhxw, coeffs float Kx32 -> float32 Kxhxw."""
    c, mh, mw = protos.shape
    with torch.autocast(protos.device.type, enabled=False):
        return (coeffs.float() @ protos.float().view(c, -1)).view(-1, mh, mw)


def masks_native(
    protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, orig_hw: tuple[int, int],
    low_res: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official retina masks (process_mask_native) as logits: coefficients @ prototypes,
    the letterbox padding cropped at prototype resolution (int() of the padding recomputed from
    the shapes), bilinear (align_corners=False) to the original size, then cropped to the box
    (pixel column c kept when x1 <= c < x2, rows alike).

    The official mask is `logit > 0` of the cropped map (no sigmoid; 0 outside the box). This
    returns logit(p, eps=1e-6) of p = sigmoid(logit) inside the box and 0 outside, i.e. the
    logit clamped to +-MASK_LOGIT_BOUND and -MASK_LOGIT_BOUND outside the box, so that
    `> 0` is exactly the official mask.

    protos float 32xhxw, coeffs float Kx32, boxes float Kx4 XYXY original pixels ->
    float32 KxHxW. low_res: `prototype_logits(protos, coeffs)` when already computed (rows of
    a larger product: a matmul's rounding may depend on how many rows it computes at once)."""
    c, mh, mw = protos.shape
    h, w = orig_hw
    logits = prototype_logits(protos, coeffs) if low_res is None else low_res
    gain = min(mh / h, mw / w)
    pad_w, pad_h = (mw - w * gain) / 2, (mh - h * gain) / 2
    top, left = int(pad_h), int(pad_w)
    bottom, right = int(mh - pad_h), int(mw - pad_w)
    logits = logits[:, top:bottom, left:right]
    logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    cols = torch.arange(w, device=logits.device, dtype=boxes.dtype)
    rows = torch.arange(h, device=logits.device, dtype=boxes.dtype)
    x1, y1, x2, y2 = (v[:, None] for v in boxes.unbind(1))  # (K, 1)
    in_x = (cols >= x1) & (cols < x2)  # (K, W)
    in_y = (rows >= y1) & (rows < y2)  # (K, H)
    # In place, with broadcast masks: no second KxHxW tensor
    logits.clamp_(-MASK_LOGIT_BOUND, MASK_LOGIT_BOUND)
    logits.masked_fill_(~in_y[:, :, None], -MASK_LOGIT_BOUND)
    return logits.masked_fill_(~in_x[:, None, :], -MASK_LOGIT_BOUND)


# -- model --------------------------------------------------------------------------------------


class YoloV8Seg(nn.Module):
    """YOLOv8-seg with `nc` classes at one width/depth scale (FastSAM).

    `model` is the official layer list (23 entries, the Segment head last) so state-dict keys
    equal the official ones. forward: float Bx3xHxW in [0, 1] (RGB, H and W multiples of 32)
    -> (preds float Bx(4+nc+32)xA, protos float Bx32x(H/4)x(W/4)), the official eval outputs
    that FastSAM uses (see `SegmentHead`)."""

    mask_threshold: float = 0.0  # `mask_logits > 0` is the official mask
    # Official files are Ultralytics checkpoints (a pickled module tree), read without running
    # their pickles (see ultralytics_checkpoint); `build_model` uses this instead of torch.load.
    checkpoint_loader = staticmethod(load_ultralytics_state_dict)

    def __init__(
        self,
        depth: float,
        width: float,
        max_channels: int,
        nc: int = 1,
        image_size: int = 1024,
    ) -> None:
        super().__init__()
        ch = {c: _channels(c, width, max_channels) for c in (64, 128, 256, 512, 1024)}
        c64, c128, c256, c512, c1024 = (ch[c] for c in (64, 128, 256, 512, 1024))
        n3, n6 = _repeats(3, depth), _repeats(6, depth)
        self.nc = nc
        self.image_size = image_size
        self.model = nn.Sequential(
            Conv(3, c64, 3, 2),  # 0: P1/2
            Conv(c64, c128, 3, 2),  # 1: P2/4
            C2f(c128, c128, n3, True),  # 2
            Conv(c128, c256, 3, 2),  # 3: P3/8
            C2f(c256, c256, n6, True),  # 4
            Conv(c256, c512, 3, 2),  # 5: P4/16
            C2f(c512, c512, n6, True),  # 6
            Conv(c512, c1024, 3, 2),  # 7: P5/32
            C2f(c1024, c1024, n3, True),  # 8
            SPPF(c1024, c1024, 5),  # 9
            nn.Upsample(scale_factor=2, mode="nearest"),  # 10
            Concat(),  # 11: with 6
            C2f(c1024 + c512, c512, n3, False),  # 12: top-down P4
            nn.Upsample(scale_factor=2, mode="nearest"),  # 13
            Concat(),  # 14: with 4
            C2f(c512 + c256, c256, n3, False),  # 15: P3 out
            Conv(c256, c256, 3, 2),  # 16
            Concat(),  # 17: with 12
            C2f(c256 + c512, c512, n3, False),  # 18: P4 out
            Conv(c512, c512, 3, 2),  # 19
            Concat(),  # 20: with 9
            C2f(c512 + c1024, c1024, n3, False),  # 21: P5 out
            SegmentHead(nc, _channels(256, width, max_channels), (c256, c512, c1024)),  # 22
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """Size (h, w) of the resized, unpadded image the network sees at `image_size`."""
        return letterbox_geometry(orig_hw, self.image_size).resized_hw

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % STRIDE or x.shape[3] % STRIDE:
            raise ValueError(
                f"expected Bx3xHxW with H and W multiples of {STRIDE}, got {tuple(x.shape)}"
            )
        m = self.model
        y = m[1](m[0](x))
        y = m[2](y)
        p3 = m[4](m[3](y))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        # Top-down path
        t4 = m[12](m[11]([m[10](p5), p4]))
        n3 = m[15](m[14]([m[13](t4), p3]))
        # Bottom-up path
        n4 = m[18](m[17]([m[16](n3), t4]))
        n5 = m[21](m[20]([m[19](n4), p5]))
        return m[22]([n3, n4, n5])

# -- builders -----------------------------------------------------------------------------------


def _build(depth: float, width: float, max_channels: int) -> YoloV8Seg:
    return YoloV8Seg(depth=depth, width=width, max_channels=max_channels, nc=1)


def build_fastsam_x() -> YoloV8Seg:
    """FastSAM-x: YOLOv8x-seg scale (depth 1.0, width 1.25, max 512 channels), one class."""
    return _build(1.0, 1.25, 512)


def build_fastsam_s() -> YoloV8Seg:
    """FastSAM-s: YOLOv8s-seg scale (depth 0.33, width 0.50, max 1024 channels), one class."""
    return _build(0.33, 0.50, 1024)


BUILDERS = {
    "fastsam_x": build_fastsam_x,
    "fastsam_s": build_fastsam_s,
}

# The official files are pickled Ultralytics models; their state dicts load into ours.
OFFICIAL_FILES = {
    "fastsam_x": "FastSAM-x.pt",
    "fastsam_s": "FastSAM-s.pt",
}
