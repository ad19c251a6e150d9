"""ModelSpec: everything needed to rebuild a network, resolved and stored in checkpoints.

A spec is the registry entry's defaults overlaid with the options a recipe actually set
(``None`` in :class:`~faceage.config.ModelConfig` means "keep the model's default").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..errors import ConfigError
from ..labels import DEFAULT_AGE_BIN_EDGES
from ..preprocess import PreprocessSpec


@dataclass
class ModelSpec:
    name: str
    tasks: dict[str, float]
    input_size: int
    channels: int
    pretrained: str | None = None
    freeze: str = "none"
    unfreeze_epoch: int | None = None
    batch_norm: str = "none"          # conv layers of reference CNNs
    head_batch_norm: str = "none"     # hidden dense layers of every head
    activation: str = "relu"
    conv_dropout: float = 0.0
    dense_dropout: float = 0.0
    dropout_after: str = "each"       # "each" hidden dense layer or only the "last"
    head_hidden: list[int] = field(default_factory=list)
    head_bias: bool = True
    l2: float = 0.0
    age_bins: list[int] = field(default_factory=lambda: list(DEFAULT_AGE_BIN_EDGES))
    num_classes: int | None = None
    dist_sigma: float = 2.0
    label_smoothing: float = 0.0      # training only: softened targets of gender, race, label, age_bins
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop: str = "center_square"
    tta: str = "none"                 # inference only: "flip" averages each face with its mirror image
    interval_temperature: float = 1.0  # inference only: the 90% interval is read from softmax(logits / T)
                                       # (fitted by faceage calibrate; see inference/calibration.py)
    age_prior_strength: float = 0.0   # inference only: age read from softmax(logits - strength * log age_prior),
    age_prior: list[float] | None = None   # the training ages' distribution over 0..100 (faceage calibrate --age-prior)
    gender_temperature: list[list[float]] | None = None   # inference only: [[from_age, T], ...]: the gender
                                       # probability is sigmoid(logit / T) with T of the band the predicted age falls in

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["mean"], d["std"] = tuple(d.get("mean", (0.0,))), tuple(d.get("std", (1.0,)))
        return cls(**d)

    def preprocess(self) -> PreprocessSpec:
        mean, std = self.mean, self.std
        if self.channels == 1 and len(mean) == 3:       # grayscale input to an RGB-normalized net
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return PreprocessSpec(size=self.input_size, channels=self.channels, mean=tuple(mean), std=tuple(std), crop=self.crop)


CHOICES = {
    "freeze": None,  # validated separately (none | backbone | blocks:N)
    "batch_norm": ("none", "before", "after"),
    "head_batch_norm": ("none", "before", "after"),
    "activation": ("relu", "none"),
    "dropout_after": ("each", "last"),
    "tta": ("none", "flip"),
}


def resolve_spec(defaults: ModelSpec, overrides: dict) -> ModelSpec:
    """Overlay the non-None values of a ModelConfig (as a dict) on a registry default spec."""
    known = {f.name for f in fields(ModelSpec)}
    changes = {k: v for k, v in overrides.items() if v is not None and k in known and k != "name"}
    if str(changes.get("pretrained", "")).lower() in ("none", "false", "off"):
        changes["pretrained"] = None          # explicit "no pretrained weights"
    spec = replace(defaults, **changes)
    for key, allowed in CHOICES.items():
        if allowed and getattr(spec, key) not in allowed:
            raise ConfigError(f"model.{key} must be one of {', '.join(allowed)}; got {getattr(spec, key)!r}")
    if not (spec.freeze in ("none", "backbone") or (spec.freeze.startswith("blocks:") and spec.freeze[7:].isdigit())):
        raise ConfigError(f"model.freeze must be none, backbone or blocks:N; got {spec.freeze!r}")
    if spec.channels not in (1, 3):
        raise ConfigError(f"model.channels must be 1 or 3, got {spec.channels}")
    if not spec.tasks:
        raise ConfigError("model.tasks is empty: give at least one task, e.g. {age_dist: 1.0}")
    if not (0 <= spec.conv_dropout < 1 and 0 <= spec.dense_dropout < 1):
        raise ConfigError("dropout rates must be in [0, 1)")
    return spec
