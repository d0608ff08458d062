"""SAM-family models: torch modules, checkpoint loading and a predictor. Never imports Ray."""

from .checkpoint import CheckpointError
from .predictor import Predictor
from .protocols import (
    ConceptModel,
    HighResPromptableModel,
    OnePassModel,
    PromptableModel,
    TrunkConceptModel,
    image_embedding,
)
from .registry import MODEL_REGISTRY, build_model, model_kind, models_of_kind

__all__ = ["MODEL_REGISTRY", "CheckpointError", "ConceptModel", "HighResPromptableModel",
           "OnePassModel", "Predictor", "PromptableModel", "TrunkConceptModel", "build_model",
           "image_embedding", "model_kind", "models_of_kind"]
