"""SAM 3 (facebookresearch/sam3): the image model that segments every instance of a concept
named in text, written for samdata from the official code's structure and numbers.

State-dict keys equal the `detector.*` part of the official `sam3.pt` (without the prefix), so
that the official file loads unchanged. Modules, one job each:
- `vit`: the ViT vision trunk (1008 px, patch 14, RoPE, windowed with 4 global blocks);
  `position`: the sine position encoding (maps, boxes, points); `neck`: the dual ViTDet neck.
- `tokenizer`: the BPE tokenizer (CLIP's, vocabulary file beside the checkpoint); `text`: the
  text encoder.
- `fusion`: the encoder that fuses image tokens with the prompt; `decoder`: the DETR-style
  decoder with the presence token; `scoring`: dot-product scoring of queries against the prompt.
- `geometry`: the box / point exemplar encoder; `segmentation`: the pixel decoder and mask head.
- `student`: students (a compact trunk in place of the ViT, the rest SAM 3's) for distillation.
- `interactive`: box and point prompts (`sam3_interactive`): the trunk, the neck's SAM 2 branch
  and the tracker's SAM heads, a HighResPromptableModel loading the same `sam3.pt`.
"""

from .builders import BUILDERS, OFFICIAL_FILES
from .interactive import INTERACTIVE_BUILDERS, INTERACTIVE_FILES, Sam3Interactive
from .model import TRACKER_PREFIXES, Detections, Sam3
from .student import STUDENT_BUILDERS

__all__ = ["BUILDERS", "INTERACTIVE_BUILDERS", "INTERACTIVE_FILES", "OFFICIAL_FILES",
           "STUDENT_BUILDERS", "TRACKER_PREFIXES", "Detections", "Sam3", "Sam3Interactive"]
