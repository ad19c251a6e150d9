"""faceage: train, diagnose and run CNN age and gender estimators on face images.

The public API is imported lazily so that ``import faceage`` stays cheap and inference-only
code paths need not import torch.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "analyze", "Predictor", "Face", "create_model", "list_models", "load_checkpoint",
           "predict_dataset"]


def __getattr__(name):
    if name in ("create_model", "list_models"):
        from .models import registry
        return getattr(registry, name)
    if name in ("analyze", "Predictor", "Face"):
        from .inference import predictor
        return getattr(predictor, name)
    if name == "predict_dataset":          # needs the optional extra: pip install 'faceage[ray]'
        from .distributed.ray_predict import predict_dataset
        return predict_dataset
    if name == "load_checkpoint":
        from .inference.checkpoint import load_checkpoint
        return load_checkpoint
    raise AttributeError(f"module 'faceage' has no attribute {name!r}")
