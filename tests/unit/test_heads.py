"""Each head's loss and decoding against golden numbers computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faceage.labels import DEFAULT_AGE_BIN_EDGES
from faceage.models.heads import AgeBinsHead, AgeDistributionHead, AgeRegressionHead, ClassHead, GenderHead


def _batch(**kw):
    b = {"age": torch.tensor([float("nan")] * 2), "age_bin": torch.tensor([-1, -1]), "gender": torch.tensor([-1, -1]),
         "race": torch.tensor([-1, -1]), "label": torch.tensor([-1, -1])}
    b.update(kw)
    return b


def test_age_regression_is_l1_and_masks_missing():
    h = AgeRegressionHead(4)
    out = torch.tensor([[30.0], [12.0]])
    assert h.loss(out, _batch(age=torch.tensor([25.0, float("nan")]))).item() == 5.0
    assert h.decode(out)["age"].tolist() == [30.0, 12.0]
    assert h.loss(out, _batch()).item() == 0.0           # no labels -> zero, graph stays connected


def test_age_bins_cross_entropy_and_expected_centre():
    h = AgeBinsHead(4, edges=DEFAULT_AGE_BIN_EDGES)
    out = torch.zeros(1, 10)
    out[0, 2] = 10.0                                      # confident "21-30"
    loss = h.loss(out, _batch(age_bin=torch.tensor([2])))
    expected = -math.log(math.exp(10) / (math.exp(10) + 9))
    assert abs(loss.item() - expected) < 1e-5
    d = h.decode(out)
    assert d["age_bin"].item() == 2 and abs(d["age"].item() - 25.5) < 0.05


def test_age_distribution_golden_numbers():
    h = AgeDistributionHead(4, sigma=2.0)
    t = h.target_distribution(torch.tensor([30.0]))
    assert abs(t.sum().item() - 1) < 1e-6 and t.argmax().item() == 30
    assert abs(t[0, 32].item() / t[0, 30].item() - math.exp(-0.5)) < 1e-6
    # Uniform logits: expected age 50, 5%/95% quantiles at years 5 and 95.
    d = h.decode(torch.zeros(1, 101))
    assert abs(d["age"].item() - 50.0) < 1e-4
    assert d["age_low"].item() == 5.0 and d["age_high"].item() == 95.0
    # Loss on uniform logits for age 50: CE(target, uniform) = log(101); expected-age L1 = 0.
    loss = h.loss(torch.zeros(1, 101), _batch(age=torch.tensor([50.0])))
    assert abs(loss.item() - math.log(101)) < 1e-4
    # A peaked distribution decodes to its peak with a narrow interval.
    peaked = torch.full((1, 101), -30.0)
    peaked[0, 42] = 0
    d = h.decode(peaked)
    assert abs(d["age"].item() - 42) < 1e-3 and d["age_low"].item() == 42 and d["age_high"].item() == 42


def test_gender_bce_and_probability():
    h = GenderHead(4)
    out = torch.tensor([[0.0], [2.0]])
    loss = h.loss(out, _batch(gender=torch.tensor([1, -1])))
    assert abs(loss.item() - math.log(2)) < 1e-6           # only the labelled image counts
    assert torch.allclose(h.decode(out)["gender_prob"], torch.tensor([0.5, 1 / (1 + math.exp(-2))]))


def test_class_head_for_race_and_labels():
    h = ClassHead(4, task="race", n_classes=5)
    out = torch.zeros(2, 5)
    out[0, 3] = 5.0
    assert abs(h.loss(out[:1], _batch(race=torch.tensor([3]))).item() - (-math.log(math.exp(5) / (math.exp(5) + 4)))) < 1e-5
    assert h.decode(out)["race"][0].item() == 3


def test_label_smoothing_softens_the_classification_targets_only():
    s = 0.2
    gender = GenderHead(4, label_smoothing=s)
    out = torch.tensor([[2.0], [-1.0]])
    p = torch.sigmoid(out.squeeze(1))
    # Targets 1 and 0 become 1 - s/2 = 0.9 and s/2 = 0.1 (two classes, as cross_entropy smooths).
    expected = -(0.9 * torch.log(p[0]) + 0.1 * torch.log(1 - p[0]) + 0.1 * torch.log(p[1]) + 0.9 * torch.log(1 - p[1])) / 2
    assert abs(gender.loss(out, _batch(gender=torch.tensor([1, 0]))).item() - expected.item()) < 1e-6
    assert abs(GenderHead(4).loss(out[:1], _batch(gender=torch.tensor([1]))).item() + torch.log(p[0]).item()) < 1e-6
    race = ClassHead(4, task="race", n_classes=5, label_smoothing=s)
    logits = torch.tensor([[5.0, 0, 0, 0, 0]])
    logp = logits.log_softmax(dim=1)[0]
    smoothed = -((1 - s + s / 5) * logp[0] + (s / 5) * logp[1:].sum())     # 1 - s + s/K on the class, s/K elsewhere
    assert abs(race.loss(logits, _batch(race=torch.tensor([0]))).item() - smoothed.item()) < 1e-5
    bins = AgeBinsHead(4, edges=DEFAULT_AGE_BIN_EDGES, label_smoothing=s)
    k = bins.centers.numel()                                            # one class per bin
    logits = torch.zeros(1, k)
    logits[0, 2] = 4.0
    logp = logits.log_softmax(dim=1)[0]
    smoothed = -((1 - s + s / k) * logp[2] + (s / k) * (logp.sum() - logp[2]))
    assert abs(bins.loss(logits, _batch(age_bin=torch.tensor([2]))).item() - smoothed.item()) < 1e-5
    # The age heads have no classes to smooth: they keep 0, so the option is reported as doing nothing there.
    assert AgeDistributionHead(4, label_smoothing=s).label_smoothing == 0.0
    assert AgeRegressionHead(4, label_smoothing=s).label_smoothing == 0.0


def test_teacher_targets_mix_into_age_and_gender_losses():
    """Distillation: the target is (1 - w) * label + w * teacher; w = 0 is the plain loss."""
    h = AgeDistributionHead(4, sigma=2.0)
    out = torch.randn(2, 101)
    teacher = torch.softmax(torch.randn(2, 101), dim=1)
    batch = _batch(age=torch.tensor([30.0, 61.0]), teacher_age_dist=teacher)
    plain = h.loss(out, _batch(age=torch.tensor([30.0, 61.0])))
    assert torch.allclose(h.loss(out, batch, teacher_weight=0.0), plain)
    expected = torch.softmax(out, 1) @ torch.arange(101.0)
    l1 = (expected - torch.tensor([30.0, 61.0])).abs().mean()
    only_teacher = -(teacher * torch.log_softmax(out, 1)).sum(1).mean() + l1
    assert torch.allclose(h.loss(out, batch, teacher_weight=1.0), only_teacher, atol=1e-5)
    half = 0.5 * plain + 0.5 * only_teacher           # cross-entropy is linear in its target
    assert torch.allclose(h.loss(out, batch, teacher_weight=0.5), half, atol=1e-5)

    g = GenderHead(4)
    logits = torch.tensor([[0.5], [-1.0], [2.0]])
    labels = torch.tensor([1, 0, 1])
    soft = torch.tensor([0.8, float("nan"), 0.1])      # NaN: no teacher answer -> the label alone
    got = g.loss(logits, _batch(gender=labels, teacher_gender_prob=soft), teacher_weight=0.25)
    target = torch.tensor([0.75 + 0.25 * 0.8, 0.0, 0.75 + 0.25 * 0.1])
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), target)
    assert torch.allclose(got, want, atol=1e-6)


def test_interval_temperature_moves_the_interval_never_the_estimate():
    from faceage.inference.calibration import interval_bounds
    h = AgeDistributionHead(4, sigma=2.0)
    out = torch.randn(64, 101) * 3
    plain = h.decode(out)
    widths = {}
    for t in (0.5, 1.0, 2.0):
        h.interval_temperature = t
        got = h.decode(out)
        assert torch.equal(got["age"], plain["age"])                    # the estimate keeps T = 1
        low, high = interval_bounds(out.numpy(), t)                     # what calibrate fits with
        assert np.array_equal(got["age_low"].numpy(), low) and np.array_equal(got["age_high"].numpy(), high)
        widths[t] = float((got["age_high"] - got["age_low"]).mean())
    assert widths[0.5] < widths[1.0] < widths[2.0]


def _noisy_logits(n: int, noise: float, sigma: float, seed: int = 0):
    """Gaussian age distributions of width ``sigma`` whose centres miss the true age by N(0, noise)."""
    rng = np.random.default_rng(seed)
    ages = rng.integers(1, 90, n).astype(float)
    centres = ages + rng.normal(0, noise, n)
    years = np.arange(101)
    return (-0.5 * ((years[None] - centres[:, None]) / sigma) ** 2).astype(np.float32), ages


@pytest.mark.parametrize("sigma", [1.5, 12.0])         # intervals too narrow, then too wide
def test_fit_temperature_gives_the_smallest_interval_with_90_percent_coverage(sigma):
    from faceage.inference.calibration import coverage, fit_temperature
    logits, ages = _noisy_logits(2000, noise=5.0, sigma=sigma)
    before = coverage(logits, ages, 1.0)
    t = fit_temperature(logits, ages)
    assert coverage(logits, ages, t) >= 0.90 > coverage(logits, ages, t * 0.99)
    assert (t > 1) == (before < 0.90)                  # widened when it undercovered, narrowed when it overcovered


def test_fit_temperature_finds_coverage_that_a_flat_distribution_loses_again():
    """Coverage grows with T only so far: nearly flat, the interval is about [5, 95] years and
    misses babies and the very old. Faces at both ends, each a modest peak at its true age: covered
    at T = 1, not at T = 16 (where a search that starts from the wide end finds nothing)."""
    from faceage.inference.calibration import coverage, fit_temperature
    ages = np.random.default_rng(3).choice([1.0, 2.0, 97.0, 99.0], 400)
    logits = np.zeros((400, 101), np.float32)
    logits[np.arange(400), ages.astype(int)] = 3.0
    assert coverage(logits, ages, 16.0) < 0.90 <= coverage(logits, ages, 1.0)
    t = fit_temperature(logits, ages)
    assert coverage(logits, ages, t) >= 0.90 and t <= 1.0


def test_fit_temperature_refuses_ages_no_interval_can_hold():
    from faceage.errors import DataError
    from faceage.inference.calibration import fit_temperature
    logits, _ = _noisy_logits(200, noise=1.0, sigma=2.0)
    with pytest.raises(DataError, match="no interval temperature"):
        fit_temperature(logits, np.full(200, 130.0))  # beyond the head's last year (100)


def test_age_prior_correction_divides_the_training_prior_out():
    from faceage.inference.calibration import corrected_ages, training_age_prior
    h = AgeDistributionHead(4, sigma=2.0)
    out = torch.randn(32, 101) * 3
    plain = h.decode(out)
    prior = training_age_prior(np.r_[np.full(900, 25.0), np.full(100, 70.0)])     # mostly young faces
    assert len(prior) == 101 and min(prior) > 0 and abs(sum(prior) - 1) < 1e-9
    assert prior[25] > prior[70] > prior[95]
    h.set_age_prior(0.0, prior)                                    # strength 0: the model as trained
    assert torch.equal(h.decode(out)["age"], plain["age"])
    h.set_age_prior(0.7, list(np.full(101, 0.3)))                  # a flat prior corrects nothing
    assert torch.allclose(h.decode(out)["age"], plain["age"], atol=1e-4)
    h.set_age_prior(0.7, prior)
    got = h.decode(out)
    want = (out - 0.7 * torch.log(torch.tensor(prior, dtype=torch.float32))).softmax(1) @ torch.arange(101.0)
    assert torch.allclose(got["age"], want, atol=1e-4)
    assert np.allclose(got["age"].numpy(), corrected_ages(out.numpy(), 0.7, prior), atol=1e-3)   # what calibrate scores
    # A face the model reads as "25 or 70" moves toward the rarer 70 once the prior is divided out.
    two = torch.full((1, 101), -20.0)
    two[0, 25] = two[0, 70] = 0.0
    assert h.decode(two)["age"].item() > AgeDistributionHead(4).decode(two)["age"].item() + 5
    with pytest.raises(ValueError, match="positive frequencies"):
        h.set_age_prior(0.5, [0.0] * 101)


def test_auto_strength_is_the_largest_within_the_mae_budget():
    from faceage.inference.calibration import PRIOR_STEPS, choose_strength, prior_sweep
    logits, ages = _noisy_logits(1500, noise=4.0, sigma=4.0)
    # A model that learnt a young prior: its logits favour 20-40 whatever the face.
    years = np.arange(101)
    biased = logits - 0.02 * (years[None] - 30.0) ** 2 / 10
    prior = np.exp(-0.5 * ((years - 30.0) / 15) ** 2) + 1e-3
    sweep = prior_sweep(biased, ages, prior)
    assert [r["strength"] for r in sweep] == list(PRIOR_STEPS)
    s = choose_strength(sweep, 0.01)
    chosen = next(r for r in sweep if r["strength"] == s)
    assert chosen["mae"] <= sweep[0]["mae"] * 1.01
    assert all(r["mae"] > sweep[0]["mae"] * 1.01 for r in sweep if r["strength"] > s)
    assert choose_strength(sweep, 0.0) == max(r["strength"] for r in sweep if r["mae"] <= sweep[0]["mae"])
    assert choose_strength(sweep, 10.0) == 1.0


def test_gender_temperature_by_predicted_age_softens_confidence_never_the_answer():
    from faceage.models.heads import GenderHead
    h = GenderHead(4)
    logits = torch.randn(300, 1) * 4
    age = torch.rand(300) * 90
    plain = h.decode(logits, age)["gender_prob"]
    assert torch.allclose(plain, torch.sigmoid(logits[:, 0]))                  # as trained until calibrated
    h.set_temperatures([[0, 2.5], [3, 1.5], [13, 1.0]])
    got = h.decode(logits, age)["gender_prob"]
    t = torch.where(age < 3, 2.5, torch.where(age < 13, 1.5, 1.0))
    assert torch.allclose(got, torch.sigmoid(logits[:, 0] / t))
    assert torch.equal(got >= 0.5, plain >= 0.5)                               # the answer never changes
    assert torch.allclose(h.decode(logits, torch.full((300,), 13.0))["gender_prob"], plain)   # 13 is in the last band
    h.set_temperatures(None)
    assert torch.allclose(h.decode(logits, age)["gender_prob"], plain)
    for bad in ([[3, 1.0]], [[0, 1.0], [13, 1.0], [3, 2.0]], [[0, 0.0]], [[0, float("inf")]]):
        with pytest.raises(ValueError, match="gender_temperature"):
            h.set_temperatures(bad)


def test_fit_gender_temperatures_finds_the_overconfident_ages():
    from faceage.inference.calibration import _sigmoid, fit_gender_temperatures, gender_calibration_error
    rng = np.random.default_rng(3)
    n = 6000
    age = rng.uniform(0, 80, n)
    logits = rng.normal(0, 4, n)
    # The truth: children's logits are 2.5 times too sure, 3-12 1.5 times, adults' are right.
    truth = np.where(age < 3, 2.5, np.where(age < 13, 1.5, 1.0))
    gender = (rng.random(n) < _sigmoid(logits / truth)).astype(int)
    bands, report = fit_gender_temperatures(logits, age, gender)
    assert [a for a, _ in bands] == [0, 3, 13]
    assert [round(t, 1) for _, t in bands] == pytest.approx([2.5, 1.5, 1.0], abs=0.35)
    assert report[0]["confidence_after"] < report[0]["confidence_before"] and sum(r["n"] for r in report) == n
    t = np.array([t for _, t in bands])[np.searchsorted([a for a, _ in bands], age, side="right") - 1]
    child = age < 13
    assert gender_calibration_error(_sigmoid(logits[child] / t[child]), gender[child]) < \
        gender_calibration_error(_sigmoid(logits[child]), gender[child]) / 2
    assert gender_calibration_error(_sigmoid(logits / t), gender) < gender_calibration_error(_sigmoid(logits), gender)


def test_gender_bands_with_too_few_faces_join_their_neighbour():
    from faceage.inference.calibration import gender_bands
    assert gender_bands(np.r_[np.full(150, 1.0), np.full(150, 8.0), np.full(500, 30.0)]) == [0, 3, 13]
    assert gender_bands(np.r_[np.full(20, 1.0), np.full(150, 8.0), np.full(500, 30.0)]) == [0, 13]   # babies join 3-12
    assert gender_bands(np.r_[np.full(150, 1.0), np.full(20, 8.0), np.full(500, 30.0)]) == [0, 13]
    assert gender_bands(np.full(500, 30.0)) == [0]                                                  # adults only: one band


def test_gender_metrics_report_confidence_and_calibration_error():
    from faceage.evaluation.metrics import gender_metrics
    # confidences 0.92 (right), 0.92 (wrong), 0.82 (right), 0.73 (right): three bins of 10
    m = gender_metrics(np.array([1, 0, 1, 0]), np.array([0.92, 0.92, 0.82, 0.27]))
    assert m["gender_accuracy"] == 0.75 and m["gender_mean_confidence"] == pytest.approx(0.8475)
    assert m["gender_calibration_error"] == pytest.approx(0.42 * 2 / 4 + 0.18 / 4 + 0.27 / 4)
    assert gender_metrics(np.array([1, 0]), np.array([1.0, 0.0]))["gender_calibration_error"] == 0.0


def test_model_l2_adds_l2_times_the_squared_hidden_kernels_to_the_loss():
    """README: `model.l2` is Keras-style kernel L2, `loss += l2 * sum(w**2)`, on the heads' hidden
    Dense layers (not their output layers, nor biases)."""
    from faceage.models.registry import create_model
    torch.manual_seed(0)
    kw = dict(tasks={"age_reg": 1.0, "gender": 1.0}, head_hidden=[8, 4], input_size=64, pretrained=None)
    plain, regularized = create_model("utk-custom-128", l2=0.0, **kw), create_model("utk-custom-128", l2=0.01, **kw)
    regularized.load_state_dict(plain.state_dict())
    x = torch.rand(3, 3, 64, 64)
    batch = _batch(age=torch.tensor([20.0, 35.0, 60.0]), gender=torch.tensor([0, 1, 1]))
    plain.eval(), regularized.eval()
    loss_plain, _ = plain.losses(plain(x), batch)
    loss_l2, _ = regularized.losses(regularized(x), batch)
    kernels = [m.weight for h in regularized.heads.values() for m in h.hidden.modules() if isinstance(m, torch.nn.Linear)]
    assert len(kernels) == 4                           # two hidden layers in each of the two heads
    expected = 0.01 * sum(float((w.detach() ** 2).sum()) for w in kernels)
    assert math.isclose(float((loss_l2 - loss_plain).detach()), expected, rel_tol=1e-5) and expected > 0
