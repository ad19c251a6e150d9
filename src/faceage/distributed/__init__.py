"""Scoring photo collections on a Ray cluster (the optional ``ray`` extra: ``pip install 'faceage[ray]'``).

:func:`predict_dataset` is imported lazily, so that this package (and ``faceage predict``'s
flags) load without Ray installed.
"""

__all__ = ["predict_dataset"]


def __getattr__(name):
    if name == "predict_dataset":
        from .ray_predict import predict_dataset
        return predict_dataset
    raise AttributeError(f"module 'faceage.distributed' has no attribute {name!r}")
