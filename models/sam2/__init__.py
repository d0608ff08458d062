"""SAM 2.1 (facebookresearch/sam2): the image model, loading the official checkpoints.

    hiera.py     the Hiera trunk
    neck.py      the FPN neck and the image encoder (trunk + neck)
    decoder.py   the prompt encoder and SAM 2's mask decoder
    layers.py    the MLP the SAM 2 modules share
    model.py     `Sam2`: pre/post-processing, embeddings with high-res features, decode
    builders.py  the official sizes and a test configuration
    student.py   students: TinyViT (mobile_sam2) or EfficientViT-L0 (efficientvit_sam2_l0)
                 behind SAM 2.1's heads
"""

from .builders import BUILDERS, OFFICIAL_FILES
from .model import LOW_RES_CLAMP, VIDEO_ONLY_PREFIXES, Sam2
from .student import STUDENT_BUILDERS

__all__ = ["BUILDERS", "LOW_RES_CLAMP", "OFFICIAL_FILES", "STUDENT_BUILDERS",
           "VIDEO_ONLY_PREFIXES", "Sam2"]
