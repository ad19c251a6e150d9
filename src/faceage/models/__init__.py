"""The model zoo: reference CNNs and library backbones, each with faceage task heads.

Imported lazily: ``models.spec`` must stay importable without torch (ONNX inference).
"""


def __getattr__(name):
    if name in ("create_model", "get_entry", "list_models"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'faceage.models' has no attribute {name!r}")
