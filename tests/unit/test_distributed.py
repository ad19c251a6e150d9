"""DDP pieces that need no second process: shards, per-rank generator states, launch checks."""
from __future__ import annotations

import pytest

from faceage.config import Config
from faceage.data.datamodule import EpochShuffle, RankShard
from faceage.errors import ConfigError
from faceage.training.distributed import plan, rng_for_rank


@pytest.mark.parametrize("n, world", [(10, 1), (10, 2), (11, 2), (11, 3), (5, 4)])
def test_epoch_shards_are_disjoint_equal_and_change_every_epoch(n, world):
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            s = EpochShuffle(n, seed=7, rank=rank, world_size=world)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s) == n // world
        seen = [i for sh in shards for i in sh]
        assert len(seen) == len(set(seen)) == (n // world) * world       # at most world-1 left out
        one = EpochShuffle(n, seed=7)
        one.set_epoch(epoch)
        assert set(seen) <= set(one) and (world > 1 or seen == list(one))   # one process: unchanged
    a, b = EpochShuffle(n, 7, rank=0, world_size=world), EpochShuffle(n, 7, rank=0, world_size=world)
    b.set_epoch(1)
    assert n < 4 or list(a) != list(b)


def test_validation_shards_cover_every_image_once():
    shards = [list(RankShard(29, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(29)) and [len(s) for s in shards] == [15, 14]


def test_each_rank_resumes_its_own_generator_state():
    class T:
        world_size, global_rank = 2, 1
    saved, ranks = {"who": 0}, [{"who": 0}, {"who": 1}]
    assert rng_for_rank(T, saved, ranks) == {"who": 1}
    assert rng_for_rank(T, saved, None) == saved                 # a one-process checkpoint
    T.world_size = 3
    assert rng_for_rank(T, saved, ranks) == saved                # resumed with another world size


def cfg(**train) -> Config:
    c = Config()
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def test_plan_one_process_and_two():
    assert plan(cfg(accelerator="cpu", devices=1)).world_size == 1
    launch = plan(cfg(accelerator="cpu", devices=2, strategy="ddp"))
    assert (launch.world_size, launch.global_rank, launch.is_global_zero) == (2, 0, True)


@pytest.mark.parametrize("train, words", [
    (dict(accelerator="cpu", devices=2, strategy="deepspeed"), "DeepSpeed"),
    (dict(accelerator="cpu", devices=2, strategy="fsdp"), "GPU"),
    (dict(accelerator="cpu", devices=2, strategy="ddp_spawn"), "use ddp"),
    (dict(accelerator="cpu", devices=2, strategy="ddp_fork"), "use ddp"),
    (dict(accelerator="cpu", devices=-1), "devices=-1"),
    (dict(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp"), "MASTER_ADDR"),
])
def test_plan_refuses_what_cannot_run_here(train, words, monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match=words) as err:
        plan(cfg(**train))
    assert "\n" not in str(err.value)


def test_plan_accepts_a_node_with_its_rendezvous(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    launch = plan(cfg(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp"))
    assert (launch.world_size, launch.global_rank, launch.is_global_zero) == (2, 1, False)
