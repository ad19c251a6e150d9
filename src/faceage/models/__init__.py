"""The model zoo: reference CNNs and library backbones, each with faceage task heads."""
from .registry import create_model, get_entry, list_models  # noqa: F401
