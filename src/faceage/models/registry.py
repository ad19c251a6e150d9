"""One front door for models: ``list_models(pattern)`` and ``create_model(name, **options)``.

Each entry holds the model's own defaults as a :class:`ModelSpec`; options left unset never
override them.

Examples
--------
>>> from faceage.models import create_model
>>> net = create_model("keras-baseline-28")
>>> sum(p.numel() for p in net.parameters())
203434
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD
from .backbones import LIBRARY_BACKBONES, build_library_backbone
from .dlib_resnet import DLIB_INPUT_SIZE, DLIB_MEAN, DLIB_STD, build_dlib_backbone
from .faceres import FACERES_INPUT_SIZE, FACERES_MEAN, FACERES_STD, build_faceres_backbone
from .network import FaceNet
from .reference import build_reference_backbone
from .spec import ModelSpec, resolve_spec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str            # "reference" or the library ("timm", "torchvision")
    description: str
    defaults: ModelSpec


def _reference(name: str, description: str, **kw) -> ModelEntry:
    return ModelEntry(name, "reference", description, ModelSpec(name=name, **kw))


_BINS = {"age_bins": 1.0}
_AGE_GENDER = {"age_reg": 1.0, "gender": 1.0}

_ENTRIES = [
    _reference("keras-baseline-28", "Gray 28px, 2 conv + softmax over 10 age bins (the first attempt)",
               tasks=_BINS, input_size=28, channels=1),
    _reference("keras-baseline-120", "Gray 120px, 2 conv + dense, no activations, no regularization",
               tasks=_BINS, input_size=120, channels=1, activation="none", head_hidden=[128], head_bias=False),
    _reference("keras-regularized-120", "keras-baseline-120 with BN, ReLU, L2 0.01 and dropout 0.5",
               tasks=_BINS, input_size=120, channels=1, batch_norm="before", head_batch_norm="before",
               head_hidden=[128, 64], head_bias=False, l2=0.01, dense_dropout=0.5, dropout_after="last"),
    _reference("utk-custom-128", "RGB 128px, 4 conv blocks, age regression + gender branches",
               tasks=_AGE_GENDER, input_size=128, channels=3, batch_norm="before",
               head_hidden=[256, 128], dense_dropout=0.3, l2=0.01),
    _reference("cifar10-tutorial", "RGB 32px, 3 double-conv blocks + dense 512, 10 classes",
               tasks={"label": 1.0}, input_size=32, channels=3, head_hidden=[512], num_classes=10),
    ModelEntry("utk-vgg16-128", "torchvision", "VGG16 (ImageNet), blocks 1-4 frozen, GAP, age + gender",
               ModelSpec(name="utk-vgg16-128", tasks=_AGE_GENDER, input_size=128, channels=3, pretrained="imagenet",
                         freeze="blocks:4", head_hidden=[512], dense_dropout=0.5, l2=0.01,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)),
]
for _zoo, (_lib, _libname) in LIBRARY_BACKBONES.items():
    _ENTRIES.append(ModelEntry(_zoo, _lib, f"{_lib} {_libname} backbone with faceage heads",
                               ModelSpec(name=_zoo, tasks={"age_dist": 1.0, "gender": 1.0}, input_size=128, channels=3,
                                         head_hidden=[256], dense_dropout=0.3, mean=IMAGENET_MEAN, std=IMAGENET_STD)))

# Face-pretrained: dlib's face-recognition ResNet (CC0 weights shipped in faceage/assets), with
# its own input normalization; 150 px is the size it was trained at.
_ENTRIES.append(ModelEntry("dlib_resnet29", "faceage", "dlib face-recognition ResNet-29 (3M faces, CC0) with faceage heads",
                           ModelSpec(name="dlib_resnet29", tasks={"age_dist": 1.0, "gender": 1.0}, input_size=DLIB_INPUT_SIZE,
                                     channels=3, pretrained="face", head_hidden=[256], dense_dropout=0.3,
                                     mean=DLIB_MEAN, std=DLIB_STD)))
# Face-pretrained: HSE's FaceRes MobileNet-v1 (VGGFace2 identities; Apache-2.0 weights shipped in
# faceage/assets), Caffe-mean normalization; 224 px is what it was trained at.
_ENTRIES.append(ModelEntry("faceres_mobilenet", "faceage",
                           "HSE FaceRes MobileNet-v1 (VGGFace2 identities, Apache-2.0) with faceage heads",
                           ModelSpec(name="faceres_mobilenet", tasks={"age_dist": 1.0, "gender": 1.0},
                                     input_size=FACERES_INPUT_SIZE, channels=3, pretrained="face", head_hidden=[256],
                                     dense_dropout=0.3, mean=FACERES_MEAN, std=FACERES_STD)))
# family "faceage": networks ported into faceage, each with its own builder.
FACE_BACKBONES = {"dlib_resnet29": build_dlib_backbone, "faceres_mobilenet": build_faceres_backbone}

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def list_models(pattern: str = "*") -> list[str]:
    return [n for n in REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        import difflib
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; run 'faceage models' for the list"
        raise ConfigError(f"unknown model '{name}'{hint}")
    return REGISTRY[name]


def resolve(name: str, **options) -> ModelSpec:
    return resolve_spec(get_entry(name).defaults, options)


def build_model(spec: ModelSpec) -> FaceNet:
    entry = get_entry(spec.name)
    if entry.family == "reference":
        backbone, blocks = build_reference_backbone(spec)
    elif entry.family == "faceage":
        if spec.batch_norm != "none":
            raise ConfigError(f"model.batch_norm applies to the reference CNNs; {spec.name} keeps its own affine layers")
        backbone, blocks = FACE_BACKBONES[spec.name](spec)
    else:
        if spec.batch_norm != "none":
            raise ConfigError(f"model.batch_norm applies to the reference CNNs; {spec.name} keeps its own "
                              "normalization layers (use model.head_batch_norm for the heads)")
        zoo = "vgg16" if spec.name == "utk-vgg16-128" else spec.name
        backbone, blocks, _ = build_library_backbone(spec, zoo)
    # Measure the feature width rather than trusting metadata (timm's MobileNetV3 reports 960
    # but emits 1280 after its conv head); one small forward pass in eval mode.
    with torch.no_grad():
        dim = backbone.eval()(torch.zeros(1, spec.channels, spec.input_size, spec.input_size)).shape[1]
    backbone.train()
    net = FaceNet(spec, backbone, blocks, dim)
    net.set_frozen(True)
    return net


def model_signature(spec: ModelSpec) -> tuple:
    """What training this spec would really build, for telling whether an option changes
    anything: every module's type and plain attributes (widths, dropout rates, BatchNorm, a
    head's L2 and label-distribution width), every parameter's shape and trainability, the
    buffers' shapes, and the spec fields that live outside the modules (task weights,
    preprocessing, age bins, TTA, the weights to load, when to unfreeze). Built on the meta
    device: shapes only, no memory, no initialisation, no download."""
    from dataclasses import replace
    entry = get_entry(spec.name)
    with torch.device("meta"):
        net = build_model(replace(spec, pretrained=None))
    plain = (int, float, str, bool, tuple, type(None))
    modules = tuple((name, type(m).__name__,
                     tuple(sorted((k, v) for k, v in vars(m).items()
                                  if not k.startswith("_") and k != "training" and isinstance(v, plain))))
                    for name, m in net.named_modules())
    params = tuple((n, tuple(p.shape), p.requires_grad) for n, p in net.named_parameters())
    buffers = tuple((n, tuple(b.shape)) for n, b in net.named_buffers())
    frozen = any(not p.requires_grad for p in net.parameters())
    outside = (tuple(sorted(spec.tasks.items())), spec.input_size, spec.channels, tuple(spec.mean), tuple(spec.std),
               spec.crop, tuple(spec.age_bins), spec.tta,
               spec.pretrained if entry.family != "reference" else None,   # the reference CNNs load no weights
               spec.unfreeze_epoch if frozen else None)
    return modules, params, buffers, outside


def create_model(name: str, **options) -> FaceNet:
    """Build a zoo model; ``options`` are ModelSpec fields (e.g. ``tasks``, ``input_size``)."""
    return build_model(resolve(name, **options))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable). BatchNorm running statistics are buffers and not counted."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
