"""Which annotations of an image an export keeps: the filters every export format applies.

In this order: `min_score` (an annotation's `score` when it has one, as `samdata segment` rows
carry a detector's, else its `predicted_iou`; kept when >= the bound), `min_area` (pixels of
the mask, its `area` field; kept when >= the bound), `skip_background` (a mask whose area is
>= 95% of the image's pixels is a whole-image mask, dropped), then `top_k` (the k highest
scores of what is left, ties in dataset order). Survivors keep their dataset order.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKGROUND_FRACTION = 0.95  # a mask covering this share of the image is "the whole image"


def score_of(ann: dict) -> float:
    """An annotation's score: its carried `score` if present, else its `predicted_iou`."""
    score = ann.get("score")
    return float(ann["predicted_iou"] if score is None else score)


@dataclass(frozen=True)
class AnnotationFilter:
    """The export filters (None / False: that filter is off)."""

    min_score: float | None = None  # keep score_of(ann) >= min_score
    min_area: int | None = None  # keep area >= min_area (pixels)
    top_k: int | None = None  # keep the k best-scored masks of each image
    skip_background: bool = False  # drop masks covering >= 95% of the image

    def __post_init__(self) -> None:
        if self.min_area is not None and self.min_area < 0:
            raise ValueError(f"expected min_area >= 0 pixels, got {self.min_area}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"expected top_k >= 1, got {self.top_k}")

    @property
    def active(self) -> bool:
        """Whether any filter is on."""
        return (self.min_score is not None or self.min_area is not None
                or self.top_k is not None or self.skip_background)

    def apply(self, annotations: list[dict] | None, width: int, height: int) -> list[dict]:
        """The annotations of one `width` x `height` image that pass, in their order."""
        kept = list(annotations or [])
        if self.min_score is not None:
            kept = [a for a in kept if score_of(a) >= self.min_score]
        if self.min_area is not None:
            kept = [a for a in kept if a["area"] >= self.min_area]
        if self.skip_background:
            whole = BACKGROUND_FRACTION * width * height
            kept = [a for a in kept if a["area"] < whole]
        if self.top_k is not None and len(kept) > self.top_k:
            best = sorted(range(len(kept)), key=lambda i: -score_of(kept[i]))[:self.top_k]
            kept = [kept[i] for i in sorted(best)]
        return kept


NO_FILTER = AnnotationFilter()
