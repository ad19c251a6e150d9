"""Batches from the decode cache: read -> validate -> split -> cache -> uint8 batches.

Batches leave here as uint8 ``(B, H, W, C)`` plus label tensors; conversion to float,
normalization and augmentation happen in the LightningModule, on the training device.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config
from ..errors import DataError
from ..labels import age_to_bin
from ..preprocess import PreprocessSpec
from .cache import ImageCache
from .manifest import MISSING, Manifest, NoUsableImageError, Sample, SkipReport
from .readers import read_dataset
from .split import apply_split, load_split, make_split, stratified_subset


def label_arrays(samples: list[Sample], age_bins) -> dict[str, torch.Tensor]:
    age = [s.age if s.age is not None else float("nan") for s in samples]
    return {
        "age": torch.tensor(age, dtype=torch.float32),
        "age_bin": torch.tensor([age_to_bin(s.age, age_bins) if s.age is not None else MISSING for s in samples]),
        "gender": torch.tensor([s.gender for s in samples]),
        "race": torch.tensor([s.race for s in samples]),
        "label": torch.tensor([s.label for s in samples]),
    }


class CachedFaces(Dataset):
    """Indexable by a list of positions (``__getitems__``): one call builds one whole batch."""

    def __init__(self, samples: list[Sample], cache: ImageCache, age_bins, extra: dict | None = None):
        """``extra``: more per-sample arrays to batch with the labels (the teachers' soft targets)."""
        self.samples, self.cache = samples, cache
        self.digests = [s.digest for s in samples]
        self.labels = label_arrays(samples, age_bins)
        self.labels.update({k: torch.from_numpy(v) for k, v in (extra or {}).items()})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        images = torch.from_numpy(self.cache.gather([self.digests[i] for i in idx]))
        batch = {k: v[idx] for k, v in self.labels.items()}
        batch["image"] = images          # (B, H, W, C) uint8
        batch["index"] = torch.tensor(idx)
        return batch

    def __getitem__(self, i: int):
        return self.__getitems__([i])


def _identity(batch):
    return batch


class EpochShuffle(Sampler[int]):
    """A seeded permutation per epoch, so a resumed run sees the same order as an unbroken one.

    With ``weights`` (one per sample) the epoch is instead ``n`` draws with replacement in
    proportion to them: age-balanced sampling (see :func:`age_balance_weights`).

    In a DDP run (``world_size`` > 1) every rank computes the same epoch order, cuts it to a
    multiple of ``world_size`` and takes every ``world_size``-th item from offset ``rank``: the
    ranks' shards are disjoint (no image twice in an epoch) and equally long (the same number
    of batches, which DDP needs). The at most ``world_size - 1`` left-out images change from
    epoch to epoch."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.epoch, self.weights = n, seed, 0, weights
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n if self.world_size == 1 else self.n // self.world_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        if self.world_size > 1:
            order = order[: len(self) * self.world_size][self.rank::self.world_size]
        return iter(order)


class RankShard(Sampler[int]):
    """Validation/test in a DDP run: every ``world_size``-th image from offset ``rank``, in order.
    Every image is evaluated exactly once (shards differ by at most one image; the metrics are
    sums over ranks, so uneven shards do not bias them)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))


def age_balance_weights(ages: list[float], power: float, band: int = 5) -> torch.Tensor:
    """Per-sample weights ``count(age band) ** -power``: 0 keeps UTKFace's skew (most faces are
    20-39), 1 draws every 5-year band equally often. Rare old (and baby) faces are seen more,
    which counters the pull of estimates toward the middle ages."""
    bands = torch.tensor([int(a) // band for a in ages])
    counts = torch.bincount(bands).float()
    return counts[bands].pow(-power)


def _progress(done: int, total: int) -> None:
    # On a terminal one line counts up in place; a pipe or log file gets whole lines, no \r.
    if sys.stderr.isatty():
        if done == total or done % 500 == 0:
            print(f"\rdecoding images into cache: {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
                  flush=True)
    elif done == total or done % 5000 == 0:
        print(f"decoding images into cache: {done}/{total}", file=sys.stderr, flush=True)


class FaceDataModule(L.LightningDataModule):
    def __init__(self, cfg: Config, spec: PreprocessSpec, data_path: str, run_dir: Path | None = None):
        super().__init__()
        self.cfg, self.spec, self.data_path, self.run_dir = cfg, spec, data_path, run_dir
        self.parts: dict[str, list[Sample]] = {}
        self.manifest: Manifest | None = None
        self.report = SkipReport()
        self._prepared = False

    def prepare(self, verbose: bool = True) -> None:
        """Read, validate, split and cache. Idempotent; also called by ``setup``."""
        if self._prepared:
            return
        d = self.cfg.data
        try:
            manifest, report = read_dataset(self.data_path, d.cache_dir, y_is=d.y_is)
        except NoUsableImageError as exc:
            raise self._saved(exc)
        cache = ImageCache(self.spec, d.cache_dir)
        samples = manifest.samples
        if d.limit:
            samples = stratified_subset(samples, d.limit, d.split_seed)
        samples = cache.build(samples, report, progress=_progress if verbose else None)
        if not samples:
            raise self._saved(NoUsableImageError(self.data_path, report))
        assignment = load_split(d.split_file) if d.split_file else make_split(samples, d.split, d.split_seed)
        self.parts, unassigned = apply_split(samples, assignment)
        if unassigned and verbose:
            print(f"note: {unassigned} usable image(s) are not named by the split file and are left out", file=sys.stderr)
        if not self.parts["val"]:
            raise DataError("the validation split is empty: use more images or a larger data.split[1]")
        manifest.samples = samples
        self.train_soft_targets = None
        if self.cfg.distill.targets:
            from ..training.distill import SoftTargets
            self.train_soft_targets = SoftTargets.load(self.cfg.distill.targets).for_samples(self.parts["train"])
        self.manifest, self.report, self.cache, self.assignment = manifest, report, cache, assignment
        self._prepared = True
        if verbose:
            n = {k: len(v) for k, v in self.parts.items()}
            print(f"data: {len(samples)} usable images (train {n['train']}, val {n['val']}, test {n['test']}); "
                  + report.summary().replace("\n", "\n      "), file=sys.stderr)

    def _saved(self, exc: NoUsableImageError) -> NoUsableImageError:
        """Nothing usable: the run directory still gets its skipped.json, and the message names it."""
        if self.run_dir is not None and Path(self.run_dir).is_dir():
            exc.save(Path(self.run_dir) / "skipped.json")
        return exc

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def dataset(self, part: str) -> CachedFaces:
        extra = self.train_soft_targets if part == "train" else None
        return CachedFaces(self.parts[part], self.cache, self.cfg.model.age_bins, extra)

    def _ranks(self) -> tuple[int, int]:
        """(global rank, world size) of the trainer this data module serves; (0, 1) outside one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(part)
        rank, world = self._ranks()
        if world > 1 and len(ds) < world:
            raise DataError(f"the {part} split has {len(ds)} image(s), fewer than the {world} training processes "
                            "(train.devices x train.num_nodes): use more images or fewer processes")
        if shuffle:
            power = self.cfg.data.age_balance
            weights = age_balance_weights([smp.age for smp in self.parts[part]], power) if power > 0 else None
            self.train_sampler = EpochShuffle(len(ds), self.cfg.train.seed, weights, rank=rank, world_size=world)
            sampler = self.train_sampler
        else:
            sampler = RankShard(len(ds), rank, world) if world > 1 else None
        import os

        from ..training.distributed import SAMPLE_LOG_ENV, LoggedSampler
        if os.environ.get(SAMPLE_LOG_ENV):
            from torch.utils.data import SequentialSampler
            sampler = LoggedSampler(sampler if sampler is not None else SequentialSampler(range(len(ds))),
                                    [smp.key for smp in self.parts[part]], os.environ[SAMPLE_LOG_ENV], part, rank)
        return DataLoader(ds, batch_size=self.cfg.data.batch_size, sampler=sampler, shuffle=False,
                          collate_fn=_identity, num_workers=self.cfg.data.num_workers,
                          persistent_workers=self.cfg.data.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
