"""Training with DDP (issue 13 part 2), through the CLI, on this machine's CPU (gloo, 127.0.0.1):

- ``train.devices=2 train.strategy=ddp``: two processes, each training its own shard of every
  epoch (no image twice), only rank 0 writing the run directory, which holds what a one-process
  run writes (same files, columns, one row per epoch), with metrics over the whole validation set;
- a DDP run killed mid-epoch (``FACEAGE_TEST_KILL_AT``) and resumed ends where an unbroken DDP
  run does (every rank's generator state is in the checkpoint);
- two "nodes" (``train.num_nodes=2``, one ``faceage train`` per node with NODE_RANK / MASTER_ADDR
  / MASTER_PORT, as on a cluster) train together; the second writes nothing;
- settings that cannot run here are refused in one line (exit 2) before anything starts.

Every process is started in its own session and its whole process group is killed when the
test is done with it (or on a timeout). The independent runs go side by side: the whole module
is a few minutes of a busy 2-core machine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import free_port

pytestmark = pytest.mark.integration

TIMEOUT = 420          # seconds per training process (a busy 2-core machine)
# 259 training images (odd: one is left out of each epoch), 29 validation images (shards of 15
# and 14: two batches on rank 0, one on rank 1).
TINY = ["model.name=utk-custom-128", "model.input_size=48", "data.batch_size=14", "data.split=[0.8,0.1,0.1]",
        "train.epochs=2",
        "data.num_workers=0", "train.progress_bar=false", "train.accelerator=cpu",
        # randomness a resume could lose on any rank: augmentation, a per-step schedule
        "augment.flip=0.5", "augment.rotation=10", "augment.brightness=0.2",
        "schedule.name=cosine", "schedule.warmup_epochs=1"]
DDP = ["train.devices=2", "train.strategy=ddp"]


class Procs:
    """Processes started in their own sessions; ``stop_all`` kills every group that is left."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, args, env, **extra_env) -> subprocess.Popen:
        e = dict(env, **{k: str(v) for k, v in extra_env.items()})
        e.setdefault("MASTER_PORT", str(free_port()))
        p = subprocess.Popen([sys.executable, "-m", "faceage", *map(str, args)], env=e, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.started.append(p)
        return p

    @staticmethod
    def kill_group(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)      # the session's group: Lightning's children included
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self, p: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group(p)
            out, err = p.communicate()
            raise AssertionError(f"timed out after {timeout}s: {p.args}\n{err[-3000:]}") from None
        self.kill_group(p)                         # whatever the main process left running
        return p.returncode, out, err

    def stop_all(self) -> None:
        for p in self.started:
            self.kill_group(p)
            if p.poll() is None:
                p.wait(timeout=30)


@pytest.fixture(scope="module")
def procs():
    p = Procs()
    yield p
    p.stop_all()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = {k: v for k, v in os.environ.items() if k not in ("FACEAGE_TEST_KILL_AT", "MASTER_PORT", "NODE_RANK",
                                                        "LOCAL_RANK", "WORLD_SIZE", "RANK")}
    e.update(FACEAGE_CACHE=str(tmp_path_factory.mktemp("cache")), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONWARNINGS="ignore", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
    return e


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((run_dir / "history.json").read_text())]


def ckpt(path: Path) -> dict:
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def sample_log(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("rank*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, real_subset, env, procs):
    """Started side by side: an unbroken DDP run (logging the samples each rank sees), a
    one-process run, a DDP run killed in epoch 2 then resumed, and a two-"node" run."""
    root = tmp_path_factory.mktemp("ddp")
    data = ["--data", real_subset]
    # All but the plain DDP run start at once, so they also race to build the same decode cache
    # (one decodes, the others wait for its lock: data/cache.py). The plain DDP run has a cache of
    # its own, to show that its first process decodes before it starts the second.
    log = root / "samples"
    p_ddp = procs.start(["train", *TINY, *DDP, *data, "--out", root / "ddp"], env, FACEAGE_TEST_SAMPLE_LOG=log,
                        FACEAGE_CACHE=root / "ddp-cache")
    p_one = procs.start(["train", *TINY, "train.devices=1", *data, "--out", root / "one"], env)
    p_kill = procs.start(["train", *TINY, *DDP, *data, "--out", root / "killed"], env, FACEAGE_TEST_KILL_AT="mid_epoch:2")
    port = free_port()
    nodes = [procs.start(["train", *TINY, "train.num_nodes=2", "train.devices=1", "train.strategy=ddp", *data,
                          "--out", root / ("nodes" if rank == 0 else "node1_out")], env,
                         NODE_RANK=rank, MASTER_PORT=port)
             for rank in (0, 1)]
    killed = procs.finish(p_kill)
    after_kill = history(root / "killed") if (root / "killed" / "history.json").is_file() else []
    resumed = procs.finish(procs.start(["train", "--resume", root / "killed", *data], env))
    return {"root": root, "data": real_subset, "log": log,
            "ddp": procs.finish(p_ddp), "ddp_cache": root / "ddp-cache", "one": procs.finish(p_one), "killed": killed, "after_kill": after_kill,
            "resumed": resumed, "nodes": [procs.finish(p) for p in nodes]}


def test_two_processes_train_disjoint_shards(runs):
    rc, out, err = runs["ddp"]
    assert rc == 0, err[-3000:]
    assert out.count("Epoch 1/2") == 1 and out.count("Epoch 2/2") == 1, out     # rank 0 prints, rank 1 does not
    assert "GLOBAL_RANK: 1" in err                                               # there were two processes
    split = {}
    for line in (runs["root"] / "ddp" / "split.csv").read_text().splitlines()[1:]:
        key, part = line.rsplit(",", 1)
        split.setdefault(part.strip(), set()).add(key.strip().strip('"'))
    seen: dict[tuple, dict[int, list]] = {}
    for r in sample_log(runs["log"]):
        seen.setdefault((r["part"], r["epoch"]), {})[r["rank"]] = r["ids"]
    assert sorted(seen) == [("train", 0), ("train", 1), ("val", 0), ("val", 1)]
    n_train = len(split["train"])
    for (part, epoch), by_rank in seen.items():
        assert sorted(by_rank) == [0, 1]
        a, b = by_rank[0], by_rank[1]
        assert len(set(a)) == len(a) and len(set(b)) == len(b)          # no image twice on a rank
        assert not set(a) & set(b), (part, epoch)                          # nor on both
        assert set(a) | set(b) <= split[part]
        if part == "train":
            assert len(a) == len(b) == n_train // 2                        # same number of batches
        else:
            assert set(a) | set(b) == split["val"]                         # every val image, once
            assert abs(len(a) - len(b)) == len(split["val"]) % 2           # uneven shards are fine
    assert seen[("train", 0)][0] != seen[("train", 1)][0]                  # a new order every epoch


def test_the_first_process_decodes_before_it_starts_the_second(runs):
    """README: "With train.devices=N on one machine the first process decodes before it starts the
    others". Had both processes started on an empty cache, one would decode and the other say it
    is waiting for that lock (a quiet rank says so too: data/cache.py), or, without working
    locks, decode a second chunk of its own."""
    rc, _, err = runs["ddp"]
    assert rc == 0, err[-3000:]
    decoded = [line for line in err.splitlines() if line.startswith("decoding images into cache:")]
    assert len(decoded) == 1, decoded                                      # one decode, whole
    done, total = decoded[0].rsplit(" ", 1)[1].split("/")
    assert done == total and int(total) > 250
    assert "waiting for another process" not in err
    chunks = list(runs["ddp_cache"].rglob("*.u8"))
    assert len(chunks) == 1, chunks


def test_only_rank_zero_writes_and_the_run_directory_matches_a_one_process_run(runs):
    rc, _, err = runs["one"]
    assert rc == 0, err[-3000:]
    ddp, one = runs["root"] / "ddp", runs["root"] / "one"
    assert files(ddp) == files(one)
    assert not [f for f in files(ddp) if f.endswith(".tmp")]
    h_ddp, h_one = history(ddp), history(one)
    assert [r["epoch"] for r in h_ddp] == [1, 2] and list(h_ddp[0]) == list(h_one[0])
    assert (ddp / "history.csv").read_text().splitlines()[0] == (one / "history.csv").read_text().splitlines()[0]
    a, b = ckpt(ddp / "last.ckpt"), ckpt(one / "last.ckpt")
    assert a.keys() == b.keys() and a["state_dict"].keys() == b["state_dict"].keys()
    assert a["callbacks"].keys() == b["callbacks"].keys()
    # every rank's generator state is in the DDP checkpoint; a one-process checkpoint is unchanged
    assert len(a["callbacks"]["RunCheckpoint"]["rng_ranks"]) == 2 and "rng_ranks" not in b["callbacks"]["RunCheckpoint"]
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (ddp, one))
    assert ra.keys() == rb.keys() and ra["epochs_run"] == 2 and ra["n_images"] == rb["n_images"]
    # The second "node" was given its own --out (as on a machine of its own): it wrote nothing.
    assert not (runs["root"] / "node1_out").exists()


def test_logged_metrics_cover_the_whole_validation_set(runs, env):
    """The last epoch's validation numbers in history.json (each rank validated its shard, of 15
    and 14 images; losses and metrics were summed across ranks) are those of the saved weights
    over every validation image at once, in one process: a mean of the two ranks' means would
    be off."""
    import torch

    from faceage.config import load_run_config
    from faceage.data.datamodule import FaceDataModule
    from faceage.evaluation.evaluate import evaluate
    from faceage.inference.checkpoint import load_checkpoint
    from faceage.training.module import FaceAgeModule
    ddp = runs["root"] / "ddp"
    last = history(ddp)[-1]
    close = lambda a, b: abs(a - b) <= 1e-4 * max(1.0, abs(b))          # noqa: E731 (float32 sums)
    scored = evaluate(str(ddp / "last.ckpt"), str(runs["data"]), split="val", quiet=True,
                      cache_dir=env["FACEAGE_CACHE"])
    cfg = load_run_config(ddp)
    cfg.data.split_file, cfg.data.cache_dir = str(ddp / "split.csv"), env["FACEAGE_CACHE"]
    loaded = load_checkpoint(ddp / "last.ckpt")
    module = FaceAgeModule(loaded.net, cfg).eval()
    dm = FaceDataModule(cfg, loaded.spec.preprocess(), str(runs["data"]))
    dm.prepare(verbose=False)
    val = dm.dataset("val")
    batch = val.__getitems__(list(range(len(val))))
    with torch.no_grad():
        loss, parts = module.net.losses(module.net(module.images(batch, augment=False)), batch)
    assert scored["n"] == len(val) == 29
    assert close(scored["mae"], last["val_mae"]), (scored["mae"], last["val_mae"])
    assert close(float(loss), last["val_loss"]), (float(loss), last["val_loss"])
    for task, value in parts.items():
        assert close(float(value), last[f"val_{task}_loss"]), (task, float(value), last[f"val_{task}_loss"])


def test_killed_and_resumed_ddp_run_equals_an_unbroken_one(runs):
    rc, _, err = runs["killed"]
    assert rc == -9, err[-3000:]
    assert [r["epoch"] for r in runs["after_kill"]] == [1]
    rc, out, err = runs["resumed"]
    assert rc == 0 and "at epoch 2 of 2" in err, err[-3000:]
    assert "Epoch 1/2" not in out and out.count("Epoch 2/2") == 1
    ref, killed = runs["root"] / "ddp", runs["root"] / "killed"
    # gloo's all-reduce of two CPU processes is deterministic: the same numbers, bit for bit
    assert history(killed) == history(ref)
    for name in ("last.ckpt", "best.ckpt"):
        a, b = ckpt(ref / name)["state_dict"], ckpt(killed / name)["state_dict"]
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name


def test_two_nodes_train_as_one_run(runs):
    (rc0, out0, err0), (rc1, out1, err1) = runs["nodes"]
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in err0 + err1
    run = runs["root"] / "nodes"
    assert files(run) == files(runs["root"] / "one")
    assert [r["epoch"] for r in history(run)] == [1, 2] and out1 == ""
    assert len(ckpt(run / "last.ckpt")["callbacks"]["RunCheckpoint"]["rng_ranks"]) == 2


# -- settings that cannot run here: one line, exit 2, nothing started -----------------------------

def _cases() -> dict:
    cpus = os.cpu_count() or 1
    return {
        "more_devices_than_cores": (["train.accelerator=cpu", f"train.devices={cpus + 1}", "train.strategy=ddp"],
                                    "train.devices"),
        "devices_999": (["train.accelerator=cpu", "train.devices=999"], "train.devices"),
        "ddp_on_a_missing_gpu": (["train.accelerator=gpu", "train.devices=2", "train.strategy=ddp"], "train.accelerator"),
        "deepspeed": (["train.accelerator=cpu", "train.devices=2", "train.strategy=deepspeed"], "strategy=deepspeed"),
        "fsdp_on_cpu": (["train.accelerator=cpu", "train.devices=2", "train.strategy=fsdp"], "strategy=fsdp"),
        "unknown_strategy": (["train.accelerator=cpu", "train.strategy=bogus"], "train.strategy"),
        "spawning_strategy": (["train.accelerator=cpu", "train.devices=2", "train.strategy=ddp_spawn"], "train.strategy"),
        "num_nodes_0": (["train.num_nodes=0"], "train.num_nodes"),
        "num_nodes_without_rendezvous": (["train.accelerator=cpu", "train.num_nodes=2", "train.devices=1"],
                                         "train.num_nodes"),
        "devices_all_on_cpu": (["train.accelerator=cpu", "train.devices=-1"], "devices=-1"),
    }


@pytest.mark.parametrize("case", sorted(_cases()))
def test_settings_that_cannot_run_here_are_one_line_exit_2(case, tmp_path, real_subset, capsys, monkeypatch):
    if case == "ddp_on_a_missing_gpu":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    overrides, word = _cases()[case]
    from faceage.cli import main
    capsys.readouterr()
    rc = main(["train", "model.name=utk-custom-128", "model.input_size=48", *overrides, "--data", str(real_subset),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("faceage: error: "), err[-3000:]
    assert word in lines[0], lines[0]
    assert not (tmp_path / "run").exists()              # refused before the run directory was made


def test_too_many_devices_starts_no_process_storm(tmp_path, real_subset, env, procs):
    """The CLI, as a user runs it: refused at once, and nothing of its session is left running."""
    p = procs.start(["train", "train.accelerator=cpu", "train.devices=999", "train.strategy=ddp",
                     "--data", real_subset, "--out", tmp_path / "run"], env)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=TIMEOUT)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "train.devices" in lines[0], err[-3000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)                         # no process of its group survives it
    assert not (tmp_path / "run").exists() and time.monotonic() - t0 < TIMEOUT
