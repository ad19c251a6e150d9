"""faceage's reference models against real Keras 3.

Each Keras reference model of shared/docs/reference-models.md is built in Keras from its
listing (on Keras' torch backend, so TensorFlow is not needed); faceage's layer table
(``faceage models NAME``) must equal Keras' layers one for one: kind, output shape
(channels-last), parameters, trainable, dropout rate; and the totals of faceage's summary must
equal ``model.summary()`` and ``count_params()``.

Layer kinds are compared after two documented normalisations: a Keras ``Conv2D``/``Dense`` with
``activation="relu"`` is that layer followed by a ReLU (faceage lists the ReLU as its own row), and
output activations (softmax, sigmoid) are left out (faceage's heads emit logits; the loss and the
decoding apply them). Keras' in-model augmentation layers (``RandomFlip``...) are left out:
faceage augments in its data pipeline.
"""
from __future__ import annotations

import os
import re

import pytest

if "keras" not in __import__("sys").modules:
    os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras", reason="Keras 3 is not installed: pip install -e '.[dev]' (or 'faceage[keras]')")

from faceage.models.registry import create_model  # noqa: E402
from faceage.models.summary import format_summary, layer_table  # noqa: E402

layers = keras.layers
l2 = keras.regularizers.l2


def keras_baseline_28():
    return keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(64, 3, activation="relu"),
                             layers.Conv2D(32, 3, activation="relu"), layers.Flatten(),
                             layers.Dense(10, activation="softmax")])


def keras_baseline_120():
    return keras.Sequential([keras.Input((120, 120, 1)), layers.Conv2D(64, 3, use_bias=False),
                             layers.Conv2D(32, 3, use_bias=False), layers.MaxPooling2D(2), layers.Flatten(),
                             layers.Dense(128, use_bias=False), layers.Dense(10, activation="softmax")])


def keras_regularized_120():
    return keras.Sequential([
        keras.Input((120, 120, 1)),
        layers.Conv2D(64, 3, use_bias=False), layers.BatchNormalization(), layers.Activation("relu"),
        layers.Conv2D(32, 3, use_bias=False), layers.BatchNormalization(), layers.Activation("relu"),
        layers.MaxPooling2D(2), layers.Flatten(),
        layers.Dense(128, use_bias=False, kernel_regularizer=l2(0.01)), layers.BatchNormalization(), layers.Activation("relu"),
        layers.Dense(64, use_bias=False, kernel_regularizer=l2(0.01)), layers.BatchNormalization(), layers.Activation("relu"),
        layers.Dropout(0.5), layers.Dense(10, activation="softmax")])


def _branch(x, name, widths, rate, out_activation):
    for i, w in enumerate(widths, 1):
        x = layers.Dense(w, activation="relu", kernel_regularizer=l2(0.01), name=f"{name}_dense{i}")(x)
        x = layers.Dropout(rate, name=f"{name}_dropout{i}")(x)
    return layers.Dense(1, activation=out_activation, name=f"{name}_out")(x)


def utk_custom_128():
    inp = keras.Input((128, 128, 3))
    x = layers.RandomFlip("horizontal")(inp)
    x = layers.RandomRotation(0.05)(x)
    x = layers.RandomZoom(0.1)(x)
    for f in (32, 64, 128, 256):
        x = layers.Conv2D(f, 3)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Flatten()(x)
    return keras.Model(inp, [_branch(x, "age", (256, 128), 0.3, "linear"), _branch(x, "gender", (256, 128), 0.3, "sigmoid")])


def utk_vgg16_128():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(128, 128, 3))
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block5")          # blocks 1-4 frozen
    x = layers.GlobalAveragePooling2D()(base.output)
    return keras.Model(base.input, [_branch(x, "age", (512,), 0.5, "linear"), _branch(x, "gender", (512,), 0.5, "sigmoid")])


def cifar10_tutorial(regularized=False):
    stack = [keras.Input((32, 32, 3))]
    for f in (32, 64, 128):
        for _ in range(2):
            stack.append(layers.Conv2D(f, 3, padding="same", activation="relu"))
            if regularized:
                stack.append(layers.BatchNormalization())
        stack.append(layers.MaxPooling2D(2))
        if regularized:
            stack.append(layers.Dropout(0.2))
    stack += [layers.Flatten(), layers.Dense(512, activation="relu")]
    stack += [layers.Dropout(0.5)] if regularized else []
    return keras.Sequential(stack + [layers.Dense(10, activation="softmax")])


CASES = {
    "keras-baseline-28": (keras_baseline_28, {}),
    "keras-baseline-120": (keras_baseline_120, {}),
    "keras-regularized-120": (keras_regularized_120, {}),
    "utk-custom-128": (utk_custom_128, {}),
    "utk-vgg16-128": (utk_vgg16_128, {"pretrained": "none"}),
    "cifar10-tutorial": (cifar10_tutorial, {}),
    "cifar10-tutorial (regularized)": (lambda: cifar10_tutorial(True),
                                       {"batch_norm": "after", "conv_dropout": 0.2, "dense_dropout": 0.5}),
}


def keras_rows(model) -> dict[str, list[tuple]]:
    """(kind, shape, params, trainable, rate) per layer, grouped by branch (age_/gender_ prefix)."""
    groups: dict[str, list[tuple]] = {}
    for la in model.layers:
        kind = type(la).__name__
        if kind == "InputLayer" or kind.startswith("Random"):
            continue
        branch = la.name.split("_")[0] if la.name.startswith(("age_", "gender_")) else "trunk"
        shape = tuple(la.output.shape[1:])
        params = la.count_params()
        trainable = bool(la.trainable and la.trainable_weights)
        rows = groups.setdefault(branch, [])
        name = {"Conv2D": "conv", "Dense": "dense", "BatchNormalization": "bn", "MaxPooling2D": "pool",
                "Flatten": "flatten", "GlobalAveragePooling2D": "gap", "Dropout": "dropout",
                "Activation": "act"}[kind]
        if name == "act":
            rows.append((la.activation.__name__, shape, 0, False, None))
            continue
        rows.append((name, shape, params, trainable if params else False, getattr(la, "rate", None)))
        act = getattr(la, "activation", None)
        if name in ("conv", "dense") and act is not None and act.__name__ == "relu":
            rows.append(("relu", shape, 0, False, None))
    return groups


def faceage_rows(net) -> dict[str, list[tuple]]:
    modules = dict(net.named_modules())
    multi = len(net.heads) > 1
    groups: dict[str, list[tuple]] = {}
    for name, typ, shape, params, trainable in layer_table(net):
        dims = tuple(int(s) for s in re.findall(r"\d+", shape))
        if len(dims) == 3:
            dims = (dims[1], dims[2], dims[0])                 # (C, H, W) -> Keras' (H, W, C)
        kind = {"Conv2d": "conv", "Linear": "dense", "BatchNorm2d": "bn", "BatchNorm1d": "bn", "ReLU": "relu",
                "MaxPool2d": "pool", "Flatten": "flatten", "Dropout": "dropout", "AdaptiveAvgPool2d": "gap",
                "Sequential": None}[typ]
        if kind is None:                                        # an empty hidden stack: no layer
            assert params == 0
            continue
        branch = "trunk"
        if multi and name.startswith("heads."):
            branch = {"age_reg": "age", "gender": "gender"}[name.split(".")[1]]
        rows = groups.setdefault(branch, [])
        if kind == "flatten" and rows and rows[-1][0] == "gap":
            rows[-1] = ("gap", dims, 0, False, None)            # AdaptiveAvgPool2d(1) + Flatten = GAP
            continue
        rate = float(modules[name].p) if kind == "dropout" else None
        rows.append((kind, dims if kind != "gap" else (dims[-1],), params, bool(trainable) if params else False, rate))
    return groups


def keras_totals(model) -> tuple[int, int, int]:
    """Total, trainable and non-trainable parameters as Keras' model.summary() prints them."""
    text: list[str] = []
    model.summary(print_fn=lambda line, *a, **k: text.append(line))
    found = dict(re.findall(r"(Total|Trainable|Non-trainable) params: ([\d,]+)", "\n".join(text)))
    return tuple(int(found[k].replace(",", "")) for k in ("Total", "Trainable", "Non-trainable"))


def faceage_totals(net) -> tuple[int, int, int]:
    text = format_summary(net)
    found = dict(re.findall(r"^(Total|Trainable|Non-trainable) params: ([\d,]+)", text, re.M))
    return tuple(int(found[k].replace(",", "")) for k in ("Total", "Trainable", "Non-trainable"))


@pytest.mark.parametrize("case", list(CASES))
def test_layer_table_shapes_and_parameters_equal_keras(case):
    build, options = CASES[case]
    model = build()
    net = create_model(case.split(" ")[0], **options)
    assert faceage_rows(net) == keras_rows(model)
    total, trainable, frozen = keras_totals(model)
    assert total == model.count_params()
    assert faceage_totals(net) == (total, trainable, frozen)


def test_reference_parameter_counts_from_the_write_ups():
    assert keras_baseline_28().count_params() == 203_434
    assert keras_totals(utk_vgg16_128()) == (15_241_026, 7_605_762, 7_635_264)
    assert round(utk_custom_128().count_params() / 1e6, 2) == 5.18   # "about 5.17 M" (+1,920 BatchNorm statistics)


def _l2_kernels_keras(model):
    return sorted((int(la.kernel.shape[0] * la.kernel.shape[1]), round(float(la.kernel_regularizer.l2), 6))
                  for la in model.layers if getattr(la, "kernel_regularizer", None) is not None)


def _l2_kernels_faceage(net):
    return sorted((lin.weight.numel(), round(float(h.l2), 6)) for h in net.heads.values() if h.l2 > 0 for lin in h._l2_layers)


@pytest.mark.parametrize("case", ["keras-regularized-120", "utk-custom-128", "utk-vgg16-128"])
def test_l2_regularizes_the_same_kernels_as_keras(case):
    build, options = CASES[case]
    assert _l2_kernels_faceage(create_model(case, **options)) == _l2_kernels_keras(build())
