"""SAM-family models: torch modules, checkpoint loading and a predictor. Never imports Ray."""

from .checkpoint import CheckpointError
from .predictor import Predictor
from .registry import MODEL_REGISTRY, build_model

__all__ = ["MODEL_REGISTRY", "CheckpointError", "Predictor", "build_model"]
