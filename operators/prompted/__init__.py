"""Prompted masks (`samdata segment`, and the prompted protocols of `samdata evaluate`): one mask
per prompt (a box, points, or both), with any registry model.

    prompts.py   the prompt of one mask, prompts of several images as arrays (PromptSet), and
                 the masks that come back (MaskChunk)
    sources.py   where prompts come from: the shard's SA-1B json, a COCO instances JSON, a
                 Parquet dataset of prompts (e.g. a detector's boxes)
    sam.py       SAM-design models: prompts of several images per decoder call, the mask of
                 highest predicted IoU kept, only kept masks upscaled
    fastsam.py   FastSAM: its own selection among its everything-mode masks
    segmenter.py the Ray actor of `samdata segment`, and `build_prompter` for any model
"""
