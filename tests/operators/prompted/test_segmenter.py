"""The segment actor on prepared rows: a result per prompt with the prompt and its carried
fields, COCO RLE that decodes to the image, error rows for unusable prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from operators.config import InputConfig, ModelConfig, PromptsConfig
from operators.prompted.segmenter import Segmenter
from operators.shards.prepare import read_and_prepare
from operators.shards.sample import write_sample_corpus
from operators.shards.write import segments_table
from tests.support import as_batch


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = write_sample_corpus(str(tmp_path_factory.mktemp("corpus")), shards=1,
                               images_per_shard=3, seed=7)[0]
    item = {"shard": "sa_000000", "url": path, "container": "tar"}
    out = list(read_and_prepare(item, "sam_tiny", InputConfig(urls=["-"]), mode="original",
                                include_annotations=True))
    assert out[-1]["is_end"] and all(r["annotations_json"] for r in out[:-1])
    return out


def test_a_result_per_sa1b_box_with_its_prompt(rows):
    actor = Segmenter(ModelConfig(name="sam_tiny", seed=0),
                      PromptsConfig(source="sa1b", use="box+point", decoder_batch_size=3))
    broken = dict(rows[1], annotations_json=json.dumps([{"id": 5, "bbox": [1, 2]}]))
    batch = as_batch([rows[0], broken, rows[2], rows[3]])
    out = actor(batch)
    assert "pixels" not in out and "annotations_json" not in out
    assert out["status"].tolist() == ["ok", "error", "ok", "end"]
    assert "prompts: annotation 0 (id 5)" in out["error"][1]
    for i in (0, 2):
        gt = json.loads(rows[i]["annotations_json"])
        h, w = rows[i]["orig_hw"]
        got = out["annotations"][i]
        assert [a["id"] for a in got] == list(range(len(gt)))
        assert [a["source_id"] for a in got] == [g["id"] for g in gt]
        for a, g in zip(got, gt, strict=True):
            x, y, bw, bh = g["bbox"]
            assert a["prompt_box"] == [x, y, x + bw, y + bh]
            assert a["point_coords"] == g["point_coords"] and a["point_labels"] == [1]
            assert a["crop_box"] == [0.0, 0.0, float(w), float(h)]
            rle = {"size": a["segmentation"]["size"],
                   "counts": a["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (h, w)
            assert int(mask_utils.decode(rle).sum()) == a["area"]
            assert np.isfinite(a["predicted_iou"]) and 0 <= a["stability_score"] <= 1
            assert a["category_id"] is None and a["score"] is None
    assert json.loads(out["settings"][0]) == {"multimask": True, "path": None,
                                              "source": "sa1b", "use": "box+point"}
    # the rows become the segment table
    ok = np.array([0, 2])
    table = segments_table({k: v[ok] for k, v in out.items()})
    assert table.num_rows == 2
    assert table.column("annotations")[0].as_py()[0]["prompt_box"] == \
        out["annotations"][0][0]["prompt_box"]


def test_coco_prompts_carry_categories_and_unlisted_images_get_none(rows, tmp_path):
    h, w = (int(v) for v in rows[0]["orig_hw"])
    coco = {"images": [{"id": 1, "file_name": f"{rows[0]['key']}.jpg", "height": h,
                        "width": w}],
            "categories": [{"id": 4, "name": "thing"}],
            "annotations": [{"id": 9, "image_id": 1, "bbox": [1, 1, 20, 20], "category_id": 4,
                             "score": 0.75}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    actor = Segmenter(ModelConfig(name="sam_tiny", seed=0),
                      PromptsConfig(source="coco", path=str(path)))
    out = actor(as_batch(rows[:2]))
    assert out["status"].tolist() == ["ok", "ok"]
    (result,) = out["annotations"][0]
    assert (result["category_id"], result["category"], result["score"], result["source_id"]) \
        == (4, "thing", 0.75, 9)
    assert result["prompt_box"] == [1.0, 1.0, 21.0, 21.0] and result["point_coords"] == []
    assert out["annotations"][1] == []  # not in the COCO file: no prompts, no results
