"""The Markdown table and the PNG chart of several models' results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from operators.evaluation.metrics import MiouAccumulator
from operators.evaluation.report import CHART_SIZE, PALETTE, markdown_table, save_chart


def _summary(ious: list[float], areas: list[float]) -> dict:
    acc = MiouAccumulator()
    acc.extend(ious, areas)
    return acc.summary()


@pytest.fixture()
def results() -> dict:
    box = _summary([0.8, 0.6, 0.9], [500, 5000, 20000])
    return {
        "sam_vit_b": {
            "box": box,
            "clicks": {1: _summary([0.5], [500]), 3: _summary([0.7], [500]),
                       5: _summary([0.75], [500])},
            "proposals": {"AR@10": 0.155, "AR@100": 0.456, "AR@1000": 0.677,
                          "AR_small@1000": None, "AR_medium@1000": 0.6, "AR_large@1000": 0.8},
        },
        "mobile_sam": {"box": _summary([0.7, 0.5], [600, 700]),
                       "clicks": {1: _summary([0.4], [500])}},
        "edge_sam": {"agreement": _summary([0.72], [100])},
    }


def test_table_has_a_row_per_model_and_columns_per_number(results):
    lines = markdown_table(results).strip().splitlines()
    assert len(lines) == 2 + 3
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Model", "Box mIoU", "Box mIoU S", "Box mIoU M", "Box mIoU L", "1 click",
                      "3 clicks", "5 clicks", "Agreement mIoU (boxes)", "AR@10", "AR@100",
                      "AR@1000", "AR S", "AR M", "AR L"]
    rows = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")[1:]]
            for r in lines[2:]}
    assert list(rows) == ["sam_vit_b", "mobile_sam", "edge_sam"]
    assert rows["sam_vit_b"] == ["76.7", "80.0", "60.0", "90.0", "50.0", "70.0", "75.0", "-",
                                 "15.5", "45.6", "67.7", "-", "60.0", "80.0"]
    assert rows["mobile_sam"][:5] == ["60.0", "60.0", "-", "-", "40.0"]
    assert rows["edge_sam"][7] == "72.0" and rows["edge_sam"].count("-") == 13
    assert all(len(r) == len(header) - 1 for r in rows.values())


def test_table_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        markdown_table({})


def test_chart_png_decodes_with_the_expected_size(results, tmp_path):
    path = tmp_path / "chart.png"
    save_chart(results, str(path))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == CHART_SIZE
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for hex_colour in PALETTE[:3]:  # every model is drawn in its colour
        rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
        assert (pixels == rgb).all(1).sum() > 100, hex_colour

    small = tmp_path / "small.png"
    save_chart({"only": {"box": _summary([0.5], [50])}}, str(small), size=(900, 400))
    with Image.open(small) as image:
        assert image.size == (900, 400)


def test_the_chart_has_a_panel_per_protocol_that_ran(results):
    from operators.evaluation.report import chart_panels

    assert chart_panels({"m": {"box": _summary([0.5], [50])}}) == ["sized"]
    assert chart_panels({"m": {"proposals": {"AR@10": 0.1}}}) == ["proposals"]
    assert chart_panels(results) == ["sized", "clicks", "proposals"]
