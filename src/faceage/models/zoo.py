"""The zoo's facts as a static table, so that ``faceage models`` lists the zoo without
importing torch, timm or torchvision (about a second instead of building 19 networks).

This table is a copy of what :mod:`faceage.models.registry` builds; ``tests/unit/test_zoo_table.py``
builds every model and fails when the two differ, so it cannot drift. To regenerate it after
changing the registry, see :func:`table_source` (``python -c "from faceage.models.zoo import
table_source; print(table_source())"``) and paste its output below.
"""
from __future__ import annotations

import fnmatch
from typing import NamedTuple


class ZooFacts(NamedTuple):
    name: str
    family: str              # "reference", "faceage" or the library ("timm", "torchvision")
    params: int              # total parameters with the model's default heads
    trainable: int           # not frozen by the model's default freeze
    input_size: int
    channels: int
    tasks: tuple[str, ...]   # default tasks
    description: str


ZOO: dict[str, ZooFacts] = {e.name: e for e in (
    ZooFacts('keras-baseline-28', 'reference', 203434, 203434, 28, 1, ('age_bins',),
             'Gray 28px, 2 conv + softmax over 10 age bins (the first attempt)'),
    ZooFacts('keras-baseline-120', 'reference', 13799242, 13799242, 120, 1, ('age_bins',),
             'Gray 120px, 2 conv + dense, no activations, no regularization'),
    ZooFacts('keras-regularized-120', 'reference', 13807370, 13807370, 120, 1, ('age_bins',),
             'keras-baseline-120 with BN, ReLU, L2 0.01 and dropout 0.5'),
    ZooFacts('utk-custom-128', 'reference', 5174530, 5174530, 128, 3, ('age_reg', 'gender'),
             'RGB 128px, 4 conv blocks, age regression + gender branches'),
    ZooFacts('cifar10-tutorial', 'reference', 1341226, 1341226, 32, 3, ('label',),
             'RGB 32px, 3 double-conv blocks + dense 512, 10 classes'),
    ZooFacts('utk-vgg16-128', 'torchvision', 15241026, 7605762, 128, 3, ('age_reg', 'gender'),
             'VGG16 (ImageNet), blocks 1-4 frozen, GAP, age + gender'),
    ZooFacts('resnet18', 'timm', 11465382, 11465382, 128, 3, ('age_dist', 'gender'),
             'timm resnet18 backbone with faceage heads'),
    ZooFacts('resnet34', 'timm', 21573542, 21573542, 128, 3, ('age_dist', 'gender'),
             'timm resnet34 backbone with faceage heads'),
    ZooFacts('resnet50', 'timm', 24583334, 24583334, 128, 3, ('age_dist', 'gender'),
             'timm resnet50 backbone with faceage heads'),
    ZooFacts('mobilenetv2', 'torchvision', 2905958, 2905958, 128, 3, ('age_dist', 'gender'),
             'torchvision mobilenet_v2 backbone with faceage heads'),
    ZooFacts('mobilenetv3_large', 'timm', 4884118, 4884118, 128, 3, ('age_dist', 'gender'),
             'timm mobilenetv3_large_100 backbone with faceage heads'),
    ZooFacts('mobilenetv3_small', 'timm', 2068870, 2068870, 128, 3, ('age_dist', 'gender'),
             'timm mobilenetv3_small_100 backbone with faceage heads'),
    ZooFacts('efficientnet_b0', 'timm', 4689634, 4689634, 128, 3, ('age_dist', 'gender'),
             'timm efficientnet_b0 backbone with faceage heads'),
    ZooFacts('efficientnet_lite0', 'timm', 4053094, 4053094, 128, 3, ('age_dist', 'gender'),
             'timm efficientnet_lite0 backbone with faceage heads'),
    ZooFacts('vgg16', 'torchvision', 15003558, 15003558, 128, 3, ('age_dist', 'gender'),
             'torchvision vgg16 backbone with faceage heads'),
    ZooFacts('convnext_atto', 'timm', 3565086, 3565086, 128, 3, ('age_dist', 'gender'),
             'timm convnext_atto backbone with faceage heads'),
    ZooFacts('convnext_tiny', 'timm', 28240070, 28240070, 128, 3, ('age_dist', 'gender'),
             'timm convnext_tiny backbone with faceage heads'),
    ZooFacts('dlib_resnet29', 'faceage', 5772390, 5739622, 150, 3, ('age_dist', 'gender'),
             'dlib face-recognition ResNet-29 (3M faces, CC0) with faceage heads'),
    ZooFacts('faceres_mobilenet', 'faceage', 3752006, 3752006, 224, 3, ('age_dist', 'gender'),
             'HSE FaceRes MobileNet-v1 (VGGFace2 identities, Apache-2.0) with faceage heads'),
)}


def zoo_names(pattern: str = "*") -> list[str]:
    return [n for n in ZOO if fnmatch.fnmatch(n, pattern)]


def registry_facts() -> dict[str, ZooFacts]:
    """The same facts computed from the real registry (imports torch; builds every model on the
    meta device: shapes only, no memory, no weights)."""
    import torch

    from .registry import REGISTRY, count_parameters, create_model
    out = {}
    for name, e in REGISTRY.items():
        with torch.device("meta"):
            net = create_model(name, pretrained="none")
        total, trainable = count_parameters(net)
        d = e.defaults
        out[name] = ZooFacts(name, e.family, total, trainable, d.input_size, d.channels, tuple(d.tasks), e.description)
    return out


def table_source() -> str:
    """The ``ZOO = ...`` block of this file, from the registry."""
    lines = ["ZOO: dict[str, ZooFacts] = {e.name: e for e in ("]
    for f in registry_facts().values():
        lines.append(f"    ZooFacts({f.name!r}, {f.family!r}, {f.params}, {f.trainable}, {f.input_size}, {f.channels}, "
                     f"{f.tasks!r},\n             {f.description!r}),")
    return "\n".join(lines + [")}"])
