"""Evaluation results of several models as one Markdown table and one PNG chart (drawn with
Pillow; matplotlib is not a dependency).

`results` maps a model name to its protocols; every protocol is optional:
- "box": `MiouAccumulator.summary()` of the box-prompt protocol (miou_all/small/medium/large).
- "clicks": {number of clicks: `MiouAccumulator.summary()`} of the point-click protocol.
- "agreement": `MiouAccumulator.summary()` of student-vs-teacher agreement on the ground-truth
  boxes (buckets by ground-truth area); "agreement_points": on the seeded points (buckets by
  the reference mask's area).
- "proposals": `average_recall(...)` (AR@10, AR@100, AR@1000, AR_small/medium/large@1000).
- "concepts": {"box": ..., "mask": ...}, each `concepts.average_precision(...)` (AP, AP50,
  AP75, AP_small/medium/large and "per_category": {name: AP}).
mIoU summaries are already x100; AR and AP values are COCOeval's [0, 1] and are shown x100,
so that every number reads like the papers' tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .concepts import AP_KEYS
from .metrics import BUCKETS
from .proposals import AR_KEYS, MAX_DETS

Results = Mapping[str, Mapping[str, Any]]
Column = tuple[str, Callable[[Mapping[str, Any]], float | None]]

SIZE_LABELS = {"all": "all", "small": "S", "medium": "M", "large": "L"}  # table headers
CHART_SIZE_LABELS = {"all": "all", "small": "small\n<=1024", "medium": "medium",
                     "large": "large\n>=9216"}  # lines of the chart's x tick labels
AR_LABELS = {"AR@10": "AR@10", "AR@100": "AR@100", "AR@1000": "AR@1000",
             "AR_small@1000": "AR S", "AR_medium@1000": "AR M", "AR_large@1000": "AR L"}
AP_LABELS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AP_small": "AP S",
             "AP_medium": "AP M", "AP_large": "AP L"}
CONCEPT_KINDS = {"box": "Box", "mask": "Mask"}  # concepts: result key -> header word
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
CHART_SIZE = (1500, 560)  # width, height in pixels


def _get(*keys: Any, scale: float = 1.0) -> Callable[[Mapping[str, Any]], float | None]:
    """A reader of results[k0][k1]... x scale; None where a key or the value is missing."""
    def read(model: Mapping[str, Any]) -> float | None:
        value: Any = model
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return None if value is None else float(value) * scale
    return read


def click_counts(results: Results) -> list[int]:
    """The click counts any model has results for, ascending."""
    return sorted({int(n) for model in results.values() for n in model.get("clicks", {})})


def table_columns(results: Results) -> list[Column]:
    """(header, reader) of every column some model has, in protocol order: box mIoU by size,
    mIoU after each click count, agreement mIoU, proposal recall."""
    columns: list[Column] = []
    if any("box" in m for m in results.values()):
        columns += [(f"Box mIoU {SIZE_LABELS[b]}" if b != "all" else "Box mIoU",
                     _get("box", f"miou_{b}")) for b in BUCKETS]
    for n in click_counts(results):
        columns.append((f"{n} click{'s' if n > 1 else ''}", _get("clicks", n, "miou_all")))
    if any("agreement" in m for m in results.values()):
        columns.append(("Agreement mIoU (boxes)", _get("agreement", "miou_all")))
    if any("agreement_points" in m for m in results.values()):
        columns.append(("Agreement mIoU (points)", _get("agreement_points", "miou_all")))
    if any("proposals" in m for m in results.values()):
        columns += [(AR_LABELS[k], _get("proposals", k, scale=100.0)) for k in AR_KEYS]
    if any("concepts" in m for m in results.values()):
        columns += [(f"{word} {AP_LABELS[k]}", _get("concepts", kind, k, scale=100.0))
                    for kind, word in CONCEPT_KINDS.items() for k in AP_KEYS]
    return columns


def category_table(results: Results, digits: int = 1) -> str:
    """The concepts protocol's AP per category as a Markdown table: one row per ground-truth
    category any model row evaluated (in order of first appearance), a box and a mask AP
    column (x100) per model row; "-" where a row did not evaluate the category or it has no
    ground truth. "" when no row has concepts results."""
    rows = {name: m["concepts"] for name, m in results.items() if "concepts" in m}
    if not rows:
        return ""
    categories: dict[str, None] = {}
    for parts in rows.values():
        for kind in CONCEPT_KINDS:
            categories.update(dict.fromkeys(parts.get(kind, {}).get("per_category", {})))
    header = ["Category"] + [f"{name} {word} AP" for name in rows
                             for word in CONCEPT_KINDS.values()]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for cat in categories:
        cells = [cat]
        for parts in rows.values():
            for kind in CONCEPT_KINDS:
                value = parts.get(kind, {}).get("per_category", {}).get(cat)
                cells.append("-" if value is None else f"{100.0 * value:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: Results, digits: int = 1) -> str:
    """A Markdown table, one row per model (in `results` order), one column per measured
    number (x100); "-" where a model lacks a protocol or a bucket has no instance."""
    if not results:
        raise ValueError("expected results of at least one model, got none")
    columns = table_columns(results)
    header = ["Model"] + [name for name, _ in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * len(columns)) + "|"]
    for name, model in results.items():
        cells = [name]
        for _, read in columns:
            value = read(model)
            cells.append("-" if value is None else f"{value:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


class _Panel:
    """One chart panel: a box in the image with a 0-100 y axis and categorical x positions."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
                 x_labels: Sequence[str], x_title: str, y_title: str) -> None:
        self.draw, self.title = draw, title
        left, top, right, bottom = box
        self.plot = (left + 62, top + 34, right - 12, bottom - 66)  # axes area
        self.x_labels, self.x_title, self.y_title = list(x_labels), x_title, y_title
        scale = min(1.0, (right - left) / 500)  # smaller text in narrow panels
        self.fonts = {name: _font(max(9, round(px * scale))) for name, px in
                      (("title", 17), ("axis", 14), ("tick", 13), ("value", 11))}

    def y_of(self, value: float) -> float:
        """Pixel row of a value on the 0-100 axis."""
        _, top, _, bottom = self.plot
        return bottom - (bottom - top) * max(0.0, min(value, 100.0)) / 100.0

    def x_of(self, index: float) -> float:
        """Pixel column of the centre of category `index`."""
        left, _, right, _ = self.plot
        return left + (right - left) * (index + 0.5) / len(self.x_labels)

    def text(self, xy: tuple[float, float], text: str, font: str, anchor: str,
             fill: str = "#222222") -> None:
        self.draw.text(xy, text, fill=fill, font=self.fonts[font], anchor=anchor)

    def axes(self) -> None:
        """Title, grid lines and y ticks every 20, x tick labels, axis titles."""
        left, top, right, bottom = self.plot
        self.text(((left + right) / 2, top - 14), self.title, "title", "ms")
        for v in range(0, 101, 20):
            y = self.y_of(v)
            self.draw.line([(left, y), (right, y)], fill="#e3e3e3" if v else "#444444")
            self.text((left - 6, y), str(v), "tick", "rm")
        self.draw.line([(left, top), (left, bottom)], fill="#444444")
        for i, label in enumerate(self.x_labels):
            for row, line in enumerate(label.split("\n")):
                self.text((self.x_of(i), bottom + 6 + 16 * row), line, "tick", "mt")
        self.text(((left + right) / 2, bottom + 42), self.x_title, "axis", "mt")
        self._vertical_text((left - 46, (top + bottom) / 2), self.y_title)

    def _vertical_text(self, centre: tuple[float, float], text: str) -> None:
        """Axis text turned 90 degrees counter-clockwise, centred at `centre`."""
        font = self.fonts["axis"]
        w, h = int(self.draw.textlength(text, font=font)) + 4, 20
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((w / 2, h / 2), text, fill=255, font=font, anchor="mm")
        mask = mask.rotate(90, expand=True)
        x, y = int(centre[0] - mask.width / 2), int(centre[1] - mask.height / 2)
        self.draw.bitmap((x, y), mask, fill="#222222")

    def empty(self, message: str) -> None:
        left, top, right, bottom = self.plot
        self.text(((left + right) / 2, (top + bottom) / 2), message, "axis", "mm", "#888888")

    def bars(self, series: Sequence[tuple[str, Sequence[float | None]]]) -> None:
        """Grouped bars: one group per x category, one bar per (colour, values) series."""
        left, _, right, _ = self.plot
        width = min((right - left) / len(self.x_labels) * 0.8 / max(len(series), 1), 70.0)
        group = width * len(series)
        for s, (colour, values) in enumerate(series):
            for i, value in enumerate(values):
                x0 = self.x_of(i) - group / 2 + s * width
                if value is None:  # no instance in the bucket, or not measured
                    self.text((x0 + width / 2, self.y_of(0) - 2), "n/a", "value", "mb",
                              "#888888")
                    continue
                self.draw.rectangle([x0 + 1, self.y_of(value), x0 + width - 1, self.y_of(0)],
                                    fill=colour)
                label = f"{value:.1f}"
                if self.draw.textlength(label, font=self.fonts["value"]) <= width - 2:
                    self.text((x0 + width / 2, self.y_of(value) - 2), label, "value", "mb")

    def lines(self, series: Sequence[tuple[str, Sequence[float | None]]]) -> None:
        """One polyline with round markers per (colour, values) series; gaps at None."""
        for colour, values in series:
            points = [(self.x_of(i), self.y_of(v)) for i, v in enumerate(values) if v is not None]
            if len(points) > 1:
                self.draw.line(points, fill=colour, width=3)
            for x, y in points:
                self.draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline="white")


def _legend(draw: ImageDraw.ImageDraw, names: Sequence[str], y: int, width: int) -> None:
    """Colour swatches and model names in one centred row at height y."""
    font = _font(15)
    widths = [28 + draw.textlength(n, font=font) + 24 for n in names]
    x = (width - sum(widths)) / 2
    for i, (name, w) in enumerate(zip(names, widths, strict=True)):
        draw.rectangle([x, y - 8, x + 18, y + 8], fill=PALETTE[i % len(PALETTE)])
        draw.text((x + 26, y), name, fill="#222222", font=font, anchor="lm")
        x += w


def chart_panels(results: Results) -> list[str]:
    """The panels of a chart, a panel per protocol that ran (a box report has no empty click
    and AR panels): "sized" (box or agreement mIoU by size), "clicks", "proposals", and
    "concepts_box" / "concepts_mask" (AP of concept labels)."""
    ran = {part for m in results.values() for part in m}
    panels = [name for name, parts in (("sized", {"box", "agreement", "agreement_points"}),
                                        ("clicks", {"clicks"}),
                                        ("proposals", {"proposals"})) if ran & parts]
    if "concepts" in ran:
        panels += ["concepts_box", "concepts_mask"]
    return panels or ["sized"]


def render_chart(results: Results, size: tuple[int, int] = CHART_SIZE) -> Image.Image:
    """RGB chart of `results` (width x height = `size`), a panel per protocol that ran: box
    mIoU per size bucket (grouped bars; agreement on the ground-truth boxes when no model has
    box results), mIoU per click count (lines), AR per number of proposals (lines); a legend
    of the models on top. A panel whose models have no value says so."""
    if not results:
        raise ValueError("expected results of at least one model, got none")
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    names = list(results)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    _legend(draw, names, 22, width)
    models = list(results.values())
    panels = chart_panels(results)
    step = width // len(panels)
    boxes = {name: (i * step, 44, (i + 1) * step, height) for i, name in enumerate(panels)}

    if "sized" in boxes:
        # mIoU by size: the box protocol, or agreement on the ground-truth boxes when no box run
        sized = "box" if any("box" in m for m in models) or not any(
            "agreement" in m for m in models) else "agreement"
        title = ("Box prompt: mIoU by object size" if sized == "box"
                 else "Agreement with the reference: mIoU by size")
        panel = _Panel(draw, boxes["sized"], title, [CHART_SIZE_LABELS[b] for b in BUCKETS],
                       "ground-truth area (px)", "mIoU")
        panel.axes()
        series = [(c, [_get(sized, f"miou_{b}")(m) for b in BUCKETS])
                  for c, m in zip(colours, models, strict=True)]
        _draw_or_say(panel, series, panel.bars)

    if "clicks" in boxes:
        counts = click_counts(results)
        panel = _Panel(draw, boxes["clicks"], "Point clicks: mIoU after n clicks",
                       [str(n) for n in counts] or ["-"], "clicks", "mIoU")
        panel.axes()
        series = [(c, [_get("clicks", n, "miou_all")(m) for n in counts])
                  for c, m in zip(colours, models, strict=True)]
        _draw_or_say(panel, series, panel.lines)

    if "proposals" in boxes:
        panel = _Panel(draw, boxes["proposals"], "Object proposals: average recall",
                       [str(n) for n in MAX_DETS], "proposals per image", "AR")
        panel.axes()
        series = [(c, [_get("proposals", k, scale=100.0)(m) for k in AR_KEYS[:3]])
                  for c, m in zip(colours, models, strict=True)]
        _draw_or_say(panel, series, panel.lines)

    for kind, word in CONCEPT_KINDS.items():
        if f"concepts_{kind}" in boxes:
            panel = _Panel(draw, boxes[f"concepts_{kind}"], f"Concept labels: {word.lower()} AP",
                           [AP_LABELS[k] for k in AP_KEYS], "COCOeval, by category", "AP")
            panel.axes()
            series = [(c, [_get("concepts", kind, k, scale=100.0)(m) for k in AP_KEYS])
                      for c, m in zip(colours, models, strict=True)]
            _draw_or_say(panel, series, panel.bars)
    return image


def _draw_or_say(panel: _Panel, series: list[tuple[str, list[float | None]]],
                 draw_fn: Callable[[Sequence[tuple[str, Sequence[float | None]]]], None]) -> None:
    """Draw the series of models with at least one value (a model without this protocol
    takes no place in a bar group), or write "no results" when there are none."""
    series = [(colour, values) for colour, values in series if any(v is not None for v in values)]
    if series:
        draw_fn(series)
    else:
        panel.empty("no results")


def save_chart(results: Results, path: str, size: tuple[int, int] = CHART_SIZE) -> None:
    """Write `render_chart(results, size)` as a PNG file at local `path`."""
    render_chart(results, size).save(path, format="PNG")
