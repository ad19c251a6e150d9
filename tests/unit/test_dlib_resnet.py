"""dlib_resnet29: the port gives dlib's own descriptors (golden numbers from dlib's C++), the
dlib file reader decodes dlib's integer format, and the zoo entry behaves like the others."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceage.errors import CheckpointError, ConfigError
from faceage.models.dlib_format import _Reader, read_dlib_network
from faceage.models.dlib_resnet import (ASSET, MIN_INPUT_SIZE, DlibResNet29, add_zero_padded, final_grid,
                                        load_dlib_resnet29)
from faceage.models.registry import count_parameters, create_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "dlib_descriptor.json"


def golden_chip() -> np.ndarray:
    """The deterministic 150x150 RGB chip whose dlib descriptor is stored in tests/golden."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:150, 0:150]
    img = np.stack([(x * 1.2 + 40) % 256, (y * 1.1 + 60) % 256, ((x + y) * 0.7) % 256], -1)
    return (img * 0.7 + rng.integers(0, 60, (150, 150, 3))).clip(0, 255).astype(np.uint8)


def test_shipped_weights_give_dlibs_descriptor():
    reference = np.array(json.loads(GOLDEN.read_text())["descriptor"])
    net = load_dlib_resnet29().eval()
    x = torch.from_numpy(golden_chip()).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)) / 256.0
    with torch.inference_mode():
        ours = net.descriptor(x)[0].double().numpy()
    cosine = ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference)
    assert cosine >= 0.9999, cosine
    assert np.abs(ours - reference).max() < 2e-3          # float16 weights against dlib's float32


def test_dlib_integer_format():
    # dlib's pack_int: control byte (bit 7 = sign, low nibble = byte count), little-endian bytes.
    r = _Reader(b"\x01\x00" b"\x81\x05" b"\x02\x2c\x01" b"\x04\x00\x00\x00\x80", 0)
    assert [r.int(), r.int(), r.int(), r.int()] == [0, -5, 300, 2**31]


def test_reader_refuses_other_files(tmp_path):
    junk = tmp_path / "x.dat"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(CheckpointError, match="not a dlib DNN file"):
        read_dlib_network(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_dlib_network(tmp_path / "missing.dat")


def test_architecture_matches_dlib():
    net = DlibResNet29()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 29 and sum(p.numel() for p in net.parameters()) == 5_614_592
    widths = [c.out_channels for c in convs]               # stem + 2 convs per block, 3/4/3/3/1 blocks
    assert [widths.count(w) for w in (32, 64, 128, 256)] == [7, 8, 6, 8]
    assert final_grid(150) == 2 and final_grid(MIN_INPUT_SIZE) >= 1 and final_grid(MIN_INPUT_SIZE - 1) == 0
    with torch.no_grad():       # the smallest accepted input runs; every size in between too
        for size in (MIN_INPUT_SIZE, 112, 128, 150):
            assert net(torch.zeros(1, 3, size, size)).shape == (1, 256)


def test_add_prev_zero_pads_to_the_larger_shape():
    a, b = torch.ones(1, 4, 3, 3), torch.full((1, 2, 4, 4), 2.0)
    out = add_zero_padded(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == 3 and out[0, 3, 0, 0] == 1 and out[0, 0, 3, 3] == 2 and out[0, 3, 3, 3] == 0


def test_zoo_entry_uses_face_weights_and_its_own_input_spec():
    net = create_model("dlib_resnet29")
    assert net.spec.pretrained == "face" and net.spec.input_size == 150
    pre = net.spec.preprocess()
    assert pre.mean[0] == pytest.approx(122.782 / 255) and pre.std[0] == pytest.approx(256 / 255)
    shipped = torch.load(ASSET, weights_only=True)["state_dict"]
    assert torch.equal(net.backbone.stem[0].weight, shipped["stem.0.weight"].float())
    assert len(net.blocks) == 15                              # stem + 14 residual blocks, for freeze: blocks:N
    frozen = create_model("dlib_resnet29", freeze="blocks:8")
    total, trainable = count_parameters(frozen)
    assert 0 < trainable < total
    assert not any(p.requires_grad for p in frozen.blocks[7].parameters())
    assert all(p.requires_grad for p in frozen.blocks[8].parameters())


def test_zoo_entry_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=f"input_size >= {MIN_INPUT_SIZE}"):
        create_model("dlib_resnet29", input_size=96)
    with pytest.raises(CheckpointError, match="no ImageNet weights"):
        create_model("dlib_resnet29", pretrained="imagenet")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="does not fit dlib_resnet29"):
        create_model("dlib_resnet29", pretrained=str(tmp_path / "w.pt"))


def test_grayscale_stem_sums_the_colour_filters():
    rgb, gray = create_model("dlib_resnet29"), create_model("dlib_resnet29", channels=1)
    assert torch.allclose(gray.backbone.stem[0].weight, rgb.backbone.stem[0].weight.sum(1, keepdim=True))


def _local_dat() -> Path | None:
    """dlib's file, if this machine has it: $FACEAGE_DLIB_DAT or PyPI face-recognition-models."""
    import os
    if os.environ.get("FACEAGE_DLIB_DAT"):
        return Path(os.environ["FACEAGE_DLIB_DAT"])
    try:
        import face_recognition_models
    except ImportError:
        return None
    return Path(face_recognition_models.face_recognition_model_location())


def test_reading_dlibs_own_file_gives_the_shipped_weights():
    """``model.pretrained=PATH.dat`` converts dlib's file on the fly; it must equal the shipped
    weights (which were converted from it) up to their float16 rounding."""
    dat = _local_dat()
    if dat is None or not dat.is_file():
        pytest.skip("dlib_face_recognition_resnet_model_v1.dat not on this machine "
                    "(set FACEAGE_DLIB_DAT or pip install face-recognition-models==0.3.0)")
    from_dat = create_model("dlib_resnet29", pretrained=str(dat))
    shipped = create_model("dlib_resnet29")
    for (name, a), b in zip(from_dat.backbone.state_dict().items(), shipped.backbone.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
