"""Reliability of `faceage train` and what reads its results (issue 11, parts 1, 3 and 5):

- a run killed with SIGKILL (mid-epoch, right after an epoch, while last.ckpt is being written)
  and resumed ends with exactly the history and weights of an unbroken run, and leaves no
  temporary files behind;
- resuming a finished run changes nothing; ``train.epochs=N`` extends it;
- a diverging run stops with one line (exit 2), and no NaN model is loaded or exported;
- every invalid config value, and the CLI's numeric options, exit 2 with one line naming it;
- run-directory and export files get ordinary permissions (0o666 less the umask).

Every training run is the same tiny one (utk-custom-128 at 48 px, 64 real UTKFace images,
4 epochs, one thread) run as ``python -m faceage`` subprocesses; independent ones run side by
side to keep the module short.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TINY = ["model.name=utk-custom-128", "model.input_size=48", "data.limit=64", "data.batch_size=16", "train.epochs=4",
        "data.num_workers=0", "train.progress_bar=false",
        # randomness everywhere a resume could lose it: augmentation, dropout (the model's),
        # a per-step schedule, and early stopping's state (patient enough not to stop)
        "augment.flip=0.5", "augment.rotation=10", "augment.zoom=0.1", "augment.brightness=0.2",
        "schedule.name=cosine", "schedule.warmup_epochs=1",
        "train.early_stopping.enabled=true", "train.early_stopping.patience=10"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = {k: v for k, v in os.environ.items() if k != "FACEAGE_TEST_KILL_AT"}
    # One thread: the same arithmetic in every process (and far faster on a busy 2-core box).
    e.update(FACEAGE_CACHE=str(tmp_path_factory.mktemp("cache")), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONWARNINGS="ignore")
    return e


def start(args, env, kill_at: str | None = None, cwd=None) -> subprocess.Popen:
    e = dict(env)
    if kill_at:
        e["FACEAGE_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "faceage", *map(str, args)], env=e, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o022))


def finish(p: subprocess.Popen, timeout: float = 1200) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def run(args, env, kill_at=None) -> tuple[int, str, str]:
    return finish(start(args, env, kill_at))


def history(run_dir: Path) -> list[dict]:
    """history.json without the timings, which differ from run to run."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((run_dir / "history.json").read_text())]


def weights(ckpt: Path) -> dict:
    import torch
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def debris(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name.endswith(".tmp"))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, real_subset, env, quick_procs):
    """An unbroken run, and the same run killed three times and resumed, as one chain:
    kill while writing last.ckpt of epoch 2 -> resume -> kill after the first batch of epoch 3
    -> resume -> kill right after epoch 3 is recorded -> resume to the end.
    (``quick_procs``: the short CLI checks are started first and run alongside.)"""
    root = tmp_path_factory.mktemp("runs")
    ref, killed = root / "unbroken", root / "killed"
    data = ["--data", real_subset]
    p_ref = start(["train", *TINY, *data, "--out", ref], env)
    steps = [finish(start(["train", *TINY, *data, "--out", killed], env, kill_at="checkpoint_write:2"))]
    steps.append({"debris": debris(killed), "history": history(killed)})
    for kill in ("mid_epoch:3", "epoch_end:3", None):
        steps.append(run(["train", "--resume", killed, *data], env, kill_at=kill))
        steps.append({"debris": debris(killed), "history": history(killed)})
    ref_result = finish(p_ref)
    assert ref_result[0] == 0, ref_result[2][-3000:]
    return {"ref": ref, "killed": killed, "steps": steps, "root": root, "data": real_subset}


def test_killed_and_resumed_run_equals_an_unbroken_one(runs):
    s = runs["steps"]
    # 1: killed while last.ckpt of epoch 2 was being written: epoch 1 is recorded, the temporary
    #    file is there (and nothing else half-written)
    assert s[0][0] == -9, s[0][2][-2000:]
    assert [r["epoch"] for r in s[1]["history"]] == [1]
    assert any(d.startswith(".last.ckpt.p") for d in s[1]["debris"]), s[1]["debris"]
    # 2: resumed at epoch 2 (the first unrecorded one), killed after epoch 3's first batch
    assert s[2][0] == -9 and "resuming" in s[2][2] and "at epoch 2 of 4" in s[2][2], s[2][2][-2000:]
    assert [r["epoch"] for r in s[3]["history"]] == [1, 2] and s[3]["debris"] == []
    # 3: resumed at epoch 3, killed right after epoch 3 was recorded
    assert s[4][0] == -9 and "at epoch 3 of 4" in s[4][2], s[4][2][-2000:]
    assert [r["epoch"] for r in s[5]["history"]] == [1, 2, 3]
    # 4: resumed at epoch 4 (not 2 or 3: no epoch is trained twice) and finished
    assert s[6][0] == 0 and "at epoch 4 of 4" in s[6][2], s[6][2][-2000:]
    assert "Epoch 3/4" not in s[6][1] + s[6][2] and "Epoch 4/4" in s[6][1]
    ref, killed = runs["ref"], runs["killed"]
    # Same history to the last digit, same weights bit for bit, same summary.
    assert history(killed) == history(ref)
    for name in ("last.ckpt", "best.ckpt"):
        a, b = weights(ref / name), weights(killed / name)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (ref, killed))
    assert (ra["best_epoch"], ra["epochs_run"], ra["best"].keys()) == (rb["best_epoch"], rb["epochs_run"], rb["best"].keys())
    assert debris(killed) == [] and debris(ref) == []


def test_weight_averaging_resumes_where_an_unbroken_run_ends(runs, env):
    """train.ema_decay: checkpoints hold the averaged weights as the model (and the trained ones
    beside them), and a run killed mid-epoch and while writing a checkpoint ends bit for bit
    where an unbroken one does, both sets of weights included."""
    import torch
    ema = [*TINY, "train.ema_decay=0.9"]
    data = ["--data", runs["data"]]
    ref, killed = runs["root"] / "ema-unbroken", runs["root"] / "ema-killed"
    p_ref = start(["train", *ema, *data, "--out", ref], env)
    first = finish(start(["train", *ema, *data, "--out", killed], env, kill_at="mid_epoch:2"))
    second = run(["train", "--resume", killed, *data], env, kill_at="checkpoint_write:3")
    last = run(["train", "--resume", killed, *data], env)
    assert finish(p_ref)[0] == 0 and (first[0], second[0], last[0]) == (-9, -9, 0), last[2][-2000:]
    assert history(killed) == history(ref)
    a, b = (torch.load(d / "last.ckpt", map_location="cpu", weights_only=True) for d in (ref, killed))
    for key in ("state_dict", "current_model_state"):
        assert a[key].keys() == b[key].keys() and all(a[key][k].equal(b[key][k]) for k in a[key]), key
    assert a["averaging_state"]["n_averaged"].item() == b["averaging_state"]["n_averaged"].item() > 0
    conv = next(k for k in a["state_dict"] if k.endswith("weight"))
    assert not a["state_dict"][conv].equal(a["current_model_state"][conv])   # the average is not the last step
    assert history(ref) != history(runs["ref"])                               # and it is what validation scored
    from faceage.evaluation.compare import run_row
    assert run_row(ref)["optimizer"].endswith("weight EMA 0.9") and "EMA" not in run_row(runs["ref"])["optimizer"]


def test_last_ckpt_is_written_after_every_epoch(runs, tmp_path, env):
    """last.ckpt holds the latest epoch even when it is not the best one; best.ckpt the best."""
    import torch
    ref = runs["ref"]
    last = torch.load(ref / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(ref / "best.ckpt", map_location="cpu", weights_only=True)
    state = last["callbacks"]["RunCheckpoint"]
    assert state["epoch"] == 4 and last["epoch"] == 3                 # Lightning counts from 0
    assert best["callbacks"]["RunCheckpoint"]["epoch"] == state["best_epoch"]
    # everything a resume needs is inside
    assert last["optimizer_states"] and last["lr_schedulers"]
    assert any(k.startswith("EarlyStopping") for k in last["callbacks"])
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert len(last["callbacks"]["History"]["rows"]) == 4


def test_file_modes_follow_the_umask(runs):
    """Run directories are made with umask 022: files 0o644 (not mkstemp's 0o600)."""
    for p in runs["ref"].rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


# -- quick CLI checks, run side by side -------------------------------------------------------

def _cpu_devices_too_many() -> str:
    return f"train.devices={(os.cpu_count() or 1) + 1}"


CONFIG_CASES = {
    "lr_negative": (["optim.lr=-1"], "optim.lr"),
    "lr_nan": (["optim.lr=nan"], "optim.lr"),
    "lr_inf": (["optim.lr=.inf"], "optim.lr"),
    "dist_sigma_0": (["model.dist_sigma=0"], "model.dist_sigma"),
    "input_size_0": (["model.input_size=0"], "model.input_size"),
    "input_size_-1": (["model.input_size=-1"], "model.input_size"),
    "input_size_1": (["model.input_size=1"], "model.input_size"),
    "input_size_too_small_for_model": (["model.input_size=32"], "model.input_size"),
    "precision": (["train.precision=bogus"], "train.precision"),
    "tasks": (["model.tasks={foo: 1}"], "model.tasks"),
    "num_workers": (["data.num_workers=-1"], "data.num_workers"),
    "es_monitor": (["train.early_stopping.enabled=true", "train.early_stopping.monitor=bogus"],
                   "train.early_stopping.monitor"),
    "monitor_not_logged_by_model": (["train.monitor=val_bin_acc"], "train.monitor"),
    "num_nodes": (["train.num_nodes=0"], "train.num_nodes"),
    "head_hidden": (["model.head_hidden=[-5]"], "model.head_hidden"),
    "cache_dir": (["data.cache_dir=/proc/nope"], "data.cache_dir"),
    "split_nan": (["data.split=[nan,0.5,0.5]"], "data.split"),
    "devices_more_than_the_machine": (["train.accelerator=cpu", _cpu_devices_too_many()], "train.devices"),
    "accelerator_gpu_without_one": (["train.accelerator=gpu"], "train.accelerator"),
}


@pytest.fixture(scope="module")
def quick_procs(real_subset, env, tmp_path_factory):
    """Every short CLI check, started at once: config errors, the CLI's numeric options, and
    exporting a checkpoint whose weights are NaN."""
    import torch

    from faceage.config import Config
    from faceage.inference.checkpoint import AtomicCheckpointIO, describe
    from faceage.models.registry import create_model
    root = tmp_path_factory.mktemp("quick")
    data = ["--data", real_subset]
    image = next(Path(real_subset).glob("*.jpg"))
    cases: dict[str, list] = {}
    for name, (overrides, _) in CONFIG_CASES.items():
        cases[name] = ["train", "model.name=utk-custom-128", *overrides, *data, "--out", root / name]
    cases["ablate_epochs_0"] = ["ablate", "--config", Path(__file__).parents[2] / "configs" / "utk-custom-128.yaml",
                                "--variant", "a:optim.lr=0.001", "--epochs", "0", *data, "--out", root / "ablate"]
    cases["predict_batch_0"] = ["predict", image, "--no-detect", "--json", "--batch", "0"]
    cases["predict_batch_-1"] = ["predict", image, "--no-detect", "--json", "--batch", "-1"]
    cases["serve_workers"] = ["serve", "--workers", "100000", "--port", "0"]
    (root / "saved").mkdir()
    (root / "saved" / "config.yaml").write_text("train:\n  epochs: 2\n")
    cases["resume_extra_override"] = ["train", "--resume", root / "saved", "optim.lr=1", *data]
    # a checkpoint whose weights are NaN (what a diverged run would have saved): never exported
    net = create_model("utk-custom-128", input_size=48)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, "faceage": describe(net.spec, Config())}, root / "nan.ckpt")
    cases["export_nan"] = ["export", root / "nan.ckpt", "--out", root / "nan.onnx"]
    procs = {name: start(args, env) for name, args in cases.items()}
    return procs, root


@pytest.fixture(scope="module")
def quick(quick_procs):
    procs, root = quick_procs
    results = {name: finish(p) for name, p in procs.items()}
    results["root"] = root
    return results


def assert_one_line_error(result, *words, only_line: bool = True):
    """Exit 2, no traceback, and the error on one line naming ``words``; with ``only_line``
    nothing else was printed at all (the value was refused before any work)."""
    rc, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err[-3000:])
    assert "Traceback" not in err and lines, err[-3000:]
    assert lines[-1].startswith("faceage: error: "), err[-3000:]
    assert sum(line.startswith("faceage: error") for line in lines) == 1, err[-3000:]
    if only_line:
        assert len(lines) == 1, err[-3000:]
    for w in words:
        assert w in lines[-1], lines[-1]


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_invalid_config_value_is_one_line_exit_2(quick, case):
    if case == "accelerator_gpu_without_one":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert_one_line_error(quick[case], CONFIG_CASES[case][1])
    assert not (quick["root"] / case).exists()          # refused before the run directory is made


@pytest.mark.parametrize("case, word", [("ablate_epochs_0", "train.epochs"), ("predict_batch_0", "--batch"),
                                        ("predict_batch_-1", "--batch"), ("serve_workers", "--workers"),
                                        ("resume_extra_override", "train.epochs=N")])
def test_invalid_cli_option_is_one_line_exit_2(quick, case, word):
    assert_one_line_error(quick[case], word)


def test_nan_model_is_neither_exported_nor_loaded(quick):
    assert_one_line_error(quick["export_nan"], "non-finite")
    assert not (quick["root"] / "nan.onnx").exists() and not (quick["root"] / "nan.json").exists()
    from faceage.errors import CheckpointError
    from faceage.inference.predictor import Predictor
    with pytest.raises(CheckpointError, match="non-finite"):
        Predictor(str(quick["root"] / "nan.ckpt"), detector="skip")


def cli(capsys, *args) -> tuple[int, str, str]:
    """`faceage ARGS` in this process (torch is loaded already): (exit code, stdout, stderr)."""
    from faceage.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_diverging_run_stops_with_one_line(tmp_path, real_subset, capsys):
    result = cli(capsys, "train", *TINY, "train.epochs=2", "optim.lr=1e10", "--data", real_subset, "--out", tmp_path / "run")
    assert_one_line_error(result, "diverged", "optim.lr", only_line=False)   # after the data summary
    run_dir = tmp_path / "run"
    assert not (run_dir / "best.ckpt").exists() and not (run_dir / "last.ckpt").exists()
    assert not (run_dir / "run.json").exists() and debris(run_dir) == []


def test_resuming_a_finished_run_changes_nothing(runs, tmp_path, capsys):
    run_dir = tmp_path / "finished"
    shutil.copytree(runs["ref"], run_dir)
    before = snapshot(run_dir)
    rc, out, err = cli(capsys, "train", "--resume", run_dir, "--data", runs["data"])
    assert rc == 0, err[-3000:]
    assert "already finished" in err and "nothing to do" in err and "Epoch " not in out
    assert snapshot(run_dir) == before


def test_a_finished_run_can_be_extended(runs, tmp_path, capsys):
    run_dir = tmp_path / "extended"
    shutil.copytree(runs["ref"], run_dir)
    rc, out, err = cli(capsys, "train", "--resume", run_dir, "train.epochs=5", "--data", runs["data"])
    assert rc == 0, err[-3000:]
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and rows[:4] == history(runs["ref"])
    # The cosine is laid out again over 5 epochs. The 4-epoch one has ended (lr 0): epoch 5 would
    # leave every trained weight where epoch 4 did (batch norm's running statistics move anyway).
    import torch
    weights = lambda run: torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    before, after = weights(runs["ref"]), weights(run_dir)
    trained = [k for k in before if before[k].is_floating_point() and "running_" not in k]
    assert trained and any(not torch.equal(before[k], after[k]) for k in trained)
    assert "Epoch 5/5" in out and "Epoch 4/" not in out
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["epochs_run"] == 5 and summary["max_epochs"] == 5
    assert "epochs: 5" in (run_dir / "config.yaml").read_text()
    assert_one_line_error(cli(capsys, "train", "--resume", run_dir, "train.epochs=3", "--data", runs["data"]),
                          "fewer than the 5 epochs")


def test_export_files_follow_the_umask_and_are_verified(runs, tmp_path):
    from faceage.inference.export import export_onnx
    old = os.umask(0o027)
    try:
        r = export_onnx(runs["ref"] / "best.ckpt", tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert r["max_abs_diff"] <= r["tolerance"]
    for name in ("m.onnx", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]    # no temporaries left


def test_debris_of_killed_processes_is_removed(tmp_path, real_subset, env):
    """Temporaries whose process is gone are removed by the next run; a live process's are kept."""
    import tarfile

    from faceage.atomic import owner_pid
    from faceage.data.cache import ImageCache
    from faceage.data.readers import read_dataset
    from faceage.preprocess import PreprocessSpec
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, live = gone.pid, os.getppid()
    cache_dir = tmp_path / "cache"
    # cache chunks being decoded
    spec = PreprocessSpec(size=32, channels=3)
    chunk_dir = cache_dir / spec.cache_key()
    chunk_dir.mkdir(parents=True)
    stale, busy = chunk_dir / f".aaaa.p{dead}.u8.tmp", chunk_dir / f".bbbb.p{live}.u8.tmp"
    stale.write_bytes(b"x" * 10)
    busy.write_bytes(b"x" * 10)
    ImageCache(spec, cache_dir)
    assert not stale.exists() and busy.exists()
    # archives being unpacked
    archive = tmp_path / "utk.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(Path(real_subset).glob("*.jpg"))[:3]:
            tf.add(p, arcname=f"UTKFace/{p.name}")
    from faceage.data.readers import file_digest
    digest = file_digest(archive)[:16]
    (cache_dir / "archives").mkdir()
    partial = cache_dir / "archives" / f"{digest}.p{dead}.0123abcd.partial"
    (partial / "UTKFace").mkdir(parents=True)
    manifest, _ = read_dataset(archive, cache_dir)
    assert len(manifest.samples) == 3 and not partial.exists()
    assert [p.name for p in (cache_dir / "archives").iterdir()] == [digest]
    assert owner_pid(f".last.ckpt.p{dead}.0123abcd.tmp") == dead
