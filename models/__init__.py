"""SAM-family models: torch modules, checkpoint loading and a predictor. Never imports Ray."""

from .checkpoint import CheckpointError
from .predictor import Predictor
from .protocols import HighResPromptableModel, OnePassModel, PromptableModel
from .registry import MODEL_REGISTRY, build_model, model_kind, models_of_kind

__all__ = ["MODEL_REGISTRY", "CheckpointError", "HighResPromptableModel", "OnePassModel",
           "Predictor", "PromptableModel", "build_model", "model_kind", "models_of_kind"]
