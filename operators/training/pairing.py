"""Whether a teacher's embeddings can train a student: the frames of their grids, their
embedding shapes, their prompt frames and the fit of the teacher's prompt encoder and mask
decoder. Pure functions on models built on the meta device (no weights).

Frames: SAM, MobileSAM and EfficientViT-SAM resize the longest side and pad bottom/right
("pad"), so the cells of their grids cover the same part of an image whatever the input size
(EfficientViT-SAM L sees 512, still a 64x64 grid); EfficientSAM stretches every image to its
square ("stretch"), so its grid is not aligned with theirs; so does SAM 2.1, whose students
(models/sam2/student.py) stretch as it does. A pair whose frames differ is
refused: resampling the teacher's valid region to the stretched frame would give the student a
target, but the result could not carry the teacher's prompt encoder and mask decoder (the
EfficientSAM decoder is another network), which the output of stage 1 must.

SAM 3 (a concept model) pairs only with SAM 3 students: the map is its vision trunk's, the
"heads" are everything the trunk feeds (neck, text encoder, detector), and there are no
prompt frames to match.
"""

from __future__ import annotations

import math

from torch import nn

from models import ConceptModel
from models.export import check_heads, head_prefixes

FRAMES = ("pad", "stretch")


def embedding_frame(model: nn.Module) -> str:
    """"stretch" when `model` stretches every image to its square (input_hw of a 1:2 image is
    the whole square), else "pad" (longest side resized, bottom/right padded)."""
    s = model.image_size
    return "stretch" if tuple(model.input_hw((s, 2 * s))) == (s, s) else "pad"


def valid_cells(input_hw: tuple[int, int], image_size: int, grid: tuple[int, int]
                ) -> tuple[int, int]:
    """(rows, cols) of an embedding grid that hold the image rather than padding, for an
    image resized to `input_hw` inside the `image_size` square: the cells whose centre is
    inside the image, i.e. those EdgeSAM's bilinear-downsampled pixel mask keeps (> 0.5)."""
    out = []
    for extent, cells in zip(input_hw, grid, strict=True):
        stride = image_size / cells
        out.append(min(cells, max(1, math.floor(extent / stride + 0.5))))
    return out[0], out[1]


def describe(name: str, model: nn.Module) -> str:
    c, h, w = model.embedding_shape
    if isinstance(model, ConceptModel):
        return (f"{name} (a SAM 3 model: {c}x{h}x{w} trunk map, {embedding_frame(model)} frame "
                f"at {model.image_size}, text prompts)")
    return (f"{name} ({c}x{h}x{w} embedding, {embedding_frame(model)} frame at "
            f"{model.image_size}, prompts at {model.prompt_size})")


def check_pair(teacher_name: str, teacher: nn.Module, student_name: str, student: nn.Module,
               corpus_shape: tuple[int, ...] | None = None, heads: bool = True) -> None:
    """Raise ValueError naming the field (student.name) unless `student` can learn from
    `teacher`'s embeddings: the same embedding shape (also the corpus's `corpus_shape`), the
    same frame, the same prompt frame, and, with `heads`, a prompt encoder and mask decoder
    with the teacher's keys and shapes (so the teacher's load into the student)."""
    t_concept, s_concept = isinstance(teacher, ConceptModel), isinstance(student, ConceptModel)
    if t_concept != s_concept:
        want = ("a SAM 3 student (mobile_sam3*: a trunk for its neck, text encoder and "
                "detector)" if t_concept else "a model with a prompt encoder and mask decoder")
        raise ValueError(f"student.name: expected {want} for the teacher "
                         f"{describe(teacher_name, teacher)}, got "
                         f"{describe(student_name, student)}")
    t_shape, s_shape = tuple(teacher.embedding_shape), tuple(student.embedding_shape)
    if corpus_shape is not None and tuple(corpus_shape) != t_shape:
        raise ValueError(
            f"teacher.name: expected the model that wrote the embeddings "
            f"({'x'.join(map(str, corpus_shape))}), got {describe(teacher_name, teacher)}")
    if s_shape != t_shape:
        raise ValueError(
            f"student.name: expected a model with the teacher's {'x'.join(map(str, t_shape))} "
            f"embedding, got {describe(student_name, student)}")
    t_frame, s_frame = embedding_frame(teacher), embedding_frame(student)
    if t_frame != s_frame:
        raise ValueError(
            f"student.name: expected a model in the teacher's {t_frame} frame "
            f"({describe(teacher_name, teacher)}), got {describe(student_name, student)}: "
            "a stretched square grid and a longest-side-plus-pad grid cover different parts "
            "of an image, and the student could not take the teacher's prompt encoder and "
            "mask decoder (pair EfficientSAM with EfficientSAM, SAM 2.1 with its students "
            "mobile_sam2* and efficientvit_sam2*, the others with each other)")
    if t_concept and teacher.image_size != student.image_size:
        raise ValueError(f"student.name: expected the teacher's {teacher.image_size} px input "
                         f"({describe(teacher_name, teacher)}), got "
                         f"{describe(student_name, student)}")
    if not t_concept and teacher.prompt_size != student.prompt_size:
        raise ValueError(
            f"student.name: expected prompts in the teacher's {teacher.prompt_size} frame, "
            f"got {describe(student_name, student)}")
    if heads:
        try:
            prefixes = head_prefixes(teacher)  # meta tensors: shapes only, no copy
            heads_of_teacher = {k: v for k, v in teacher.state_dict().items()
                                if k.startswith(prefixes)}
            check_heads(student, heads_of_teacher, f"the teacher {teacher_name}")
        except ValueError as e:
            raise ValueError(f"student.name: {e}") from e
