"""Read training histories from any source into one shape: a list of per-epoch dicts.

:func:`read_history` detects the source:

- faceage: a run directory (``history.json``; its ``config.yaml`` tailors the remedies);
- Keras: a ``model.fit(verbose=1|2)`` log pasted into a text file (old ``acc`` and new
  ``accuracy`` names, progress bars, per-step timing, logs whose line breaks were lost); a
  ``CSVLogger`` file; ``history.history`` saved as JSON (a dict of lists, or under a
  ``"history"`` key); TensorBoard logs (``train/`` and ``validation/`` event files);
- PyTorch Lightning: ``CSVLogger``'s ``metrics.csv`` (step rows, validation rows and
  train-epoch rows with empty cells elsewhere, merged by epoch), a ``lightning_logs`` folder
  (its latest version), ``TensorBoardLogger`` event files, a copied progress bar;
- fastai: ``CSVLogger``'s ``history.csv`` and the console table (``learn.fine_tune``'s two
  tables are joined);
- plain PyTorch: any CSV with an epoch column; print lines such as
  ``Epoch [3/12], Train Loss: 0.52, Val Loss: 0.61``, ``epoch 3 train_loss 0.52 val_loss 0.61``
  or ``Epoch 3: train_loss=0.52 val_loss=0.61``; ``SummaryWriter`` event files.

TensorBoard event files are read with the ``tensorboard`` package (``pip install
'faceage[tensorboard]'``); everything else needs nothing beyond faceage.

Names are made Keras-like: the training value of a metric is ``X``, its validation value
``val_X``. A split word anywhere in the name decides (``train``/``training`` ->
training; ``val``/``valid``/``validation``/``eval`` -> validation; ``test`` -> ``test_X``, used
as validation only when nothing else is), so ``Train Loss``, ``train_loss``, ``loss/train`` and
``Loss_train`` all become ``loss`` and ``valid_loss``, ``val/loss``, ``Val Loss`` become
``val_loss``. Lightning's ``_step``/``_epoch`` suffixes and Keras TensorBoard's ``epoch_``
prefix mark the level: an epoch-level value wins over step values of the same metric. fastai's
metric columns without a prefix (``accuracy``, ``error_rate``) are validation metrics, as fastai
computes them on the validation set.

Several values of one metric in one epoch (step rows, progress-bar refreshes, per-batch print
lines) are merged: an epoch-level value is taken as it is; validation keeps its last value
(the one at the end of the epoch); training values are averaged, as Keras and Lightning do for
the epoch's figure. Epochs counted from 0 are renumbered from 1.

Every row has ``epoch`` (1-based) and float metrics.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf|NaN|Inf"
# Keras' "name: value" pairs, each after a " - " ("- loss: 0.6931 - accuracy: 0.5000").
PAIR = re.compile(rf"(?:^|-)\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*({NUMBER})(?![\d:])")
EPOCH = re.compile(r"\bEpoch\s+(\d+)\s*/\s*(\d+)")
NOT_METRICS = {"ETA", "eta", "Epoch", "epoch", "step", "steps", "ms", "s"}
MAX_BYTES = 256 * 2 ** 20          # a text, CSV or JSON history larger than this is not a history

SPLITS = {"train": "train", "training": "train", "trn": "train", "val": "val", "valid": "val",
          "validation": "val", "eval": "val", "evaluation": "val", "test": "test"}
IGNORED = {"epoch", "epochs", "step", "steps", "global_step", "v_num", "time", "iter", "iteration", "batch", "eta",
           "it", "hp_metric", "wall_time", "seconds", "samples", "n", "num"}
# Words that make a printed "name value" pair a sentence, not a metric ("improved from 0.6 to 0.5").
PROSE = {"improved", "improve", "from", "to", "saving", "saved", "did", "not", "no", "best", "is", "was", "reducing",
         "reduced", "restoring", "patience", "stopping", "of", "at", "in"}

# Print-style logs: an epoch marker, then "name value", "name: value" or "name=value" pairs.
MARK = re.compile(r"\bepoch\b[\s:#=]*[\[(]?\s*(\d+)(?:\s*(?:/|of)\s*\d+)?\s*[\])]?", re.I)
WORD = r"[A-Za-z][A-Za-z0-9_]*(?:[./-][A-Za-z0-9_]+)*"
LINE_PAIR = re.compile(rf"(?<![\w./-])({WORD}(?:[ \t]+{WORD}){{0,2}})[ \t]*(?:[:=][ \t]*|[ \t]+)"
                       rf"(?:tensor\([ \t]*)?({NUMBER})%?(?![\w.])")
SECTION = re.compile(r"\b(train|training|val|valid|validation|test)\b", re.I)
FASTAI_HEADER = re.compile(r"^\s*epoch\s+(?:[A-Za-z_]\w*\s+)*train_loss(?:\s+[A-Za-z_]\w*)*\s*$", re.I)


@dataclass
class History:
    rows: list[dict]
    kind: str                    # what was read, in words ("Lightning CSVLogger metrics.csv")
    framework: str               # "faceage", "keras", "lightning", "pytorch" or "fastai"
    source: Path
    names: dict[str, str] = field(default_factory=dict)   # canonical name -> as the source spells it
    run_dir: Path | None = None  # a faceage run directory (config.yaml beside history.json)
    notes: list[str] = field(default_factory=list)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _number(text) -> float | None:
    """A cell or printed value as a float; None for empty and non-numeric cells ("00:07", "#na#")."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().rstrip("%")
    if s.startswith("tensor(") and s.endswith(")"):
        s = s[7:-1].split(",")[0].strip()
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def canonical_name(raw: str, split: str | None = None) -> tuple[str, str | None] | None:
    """``(name, level)`` with name Keras-like (``loss``/``val_loss``) and level ``"epoch"``,
    ``"step"`` or None; None for columns that are not metrics (epoch, step, time, v_num)."""
    s = re.sub(r"[^0-9a-z]+", "_", raw.strip().lower()).strip("_")
    if not s or "vs_iterations" in s or s.startswith("batch_"):
        return None
    level = None
    if s.startswith("epoch_") and len(s) > 6:          # Keras' TensorBoard callback: epoch_loss
        s, level = s[6:], "epoch"
    for suffix in ("_epoch", "_step"):                  # Lightning: train_loss_step / train_loss_epoch
        if s.endswith(suffix) and len(s) > len(suffix):
            s, level = s[: -len(suffix)], suffix[1:]
            break
    parts = [p for p in s.split("_") if p not in ("avg", "average")]
    words = [p for p in parts if p in SPLITS]
    if words:
        split = SPLITS[words[0]]
        parts = [p for p in parts if p not in SPLITS]
    name = "_".join(parts)
    if not name or name in IGNORED:
        return None
    if split == "val":
        name = "val_" + name
    elif split == "test":
        name = "test_" + name
    return name, level


def assemble(records, framework: str = "pytorch") -> tuple[list[dict], dict[str, str], list[str]]:
    """Rows from ``(epoch, raw_name, value, split_hint)`` records: names made canonical, values of
    one epoch merged (see the module docstring), epochs renumbered from 1 if they start at 0."""
    acc: dict[int, dict[str, dict]] = {}
    names: dict[str, str] = {}
    named_from_step: set[str] = set()
    for epoch, raw, value, split in records:
        c = canonical_name(raw, split)
        if c is None or value is None:
            continue
        key, level = c
        acc.setdefault(int(epoch), {}).setdefault(key, {}).setdefault(level, []).append(float(value))
        if key not in names or (key in named_from_step and level != "step"):
            names[key] = raw
            named_from_step.discard(key)
            if level == "step":
                named_from_step.add(key)
    rows = []
    for epoch in sorted(acc):
        row: dict = {"epoch": epoch}
        for key, by_level in acc[epoch].items():
            if "epoch" in by_level:
                row[key] = by_level["epoch"][-1]
            elif None in by_level:
                vals = by_level[None]
                row[key] = vals[-1] if key.startswith("val_") else sum(vals) / len(vals)
            else:
                vals = by_level["step"]
                row[key] = sum(vals) / len(vals)
        rows.append(row)
    if rows and rows[0]["epoch"] == 0:
        for r in rows:
            r["epoch"] += 1
    notes: list[str] = []
    keys = set().union(*rows) if rows else set()
    if framework == "fastai":
        # fastai computes its metrics on the validation set; only the losses come in pairs.
        for k in sorted(keys):
            if k not in ("epoch", "loss", "lr") and not k.startswith(("val_", "test_", "lr_")) and f"val_{k}" not in keys:
                for r in rows:
                    if k in r:
                        r[f"val_{k}"] = r.pop(k)
                names[f"val_{k}"] = names.pop(k, k)
        keys = set().union(*rows) if rows else set()
    if not any(k.startswith("val_") for k in keys) and any(k.startswith("test_") for k in keys):
        for r in rows:
            for k in [k for k in r if k.startswith("test_")]:
                r["val_" + k[5:]] = r.pop(k)
        for k in [k for k in names if k.startswith("test_")]:
            names["val_" + k[5:]] = names.pop(k)
        notes.append("the log's 'test' numbers are the only held-out numbers: they are judged as validation")
    return rows, names, notes


def parse_keras_log(text: str) -> list[dict]:
    """Epoch rows from a ``model.fit(verbose=1)`` log, with or without line breaks.

    The log is cut at each ``Epoch N/M`` marker; within an epoch's segment the last value of
    each metric wins, because progress-bar updates print running values before the final ones.
    """
    marks = list(EPOCH.finditer(text))
    rows = []
    for i, m in enumerate(marks):
        segment = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        values: dict[str, float] = {}
        for name, value in PAIR.findall(segment):
            if name not in NOT_METRICS:
                values[name] = _to_float(value)
        if values:
            rows.append({"epoch": int(m.group(1)), **values})
    # A log pasted twice or a restarted fit: keep the last occurrence of each epoch number.
    by_epoch = {r["epoch"]: r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


def parse_print_lines(text: str) -> list[tuple]:
    """Records from print-style lines: an epoch marker, then ``name value`` pairs after it.

    Lines without a marker belong to the last marker above them (``Epoch 0/24`` on its own line,
    then ``train Loss: 0.58 Acc: 0.69`` and ``val Loss: 0.22 Acc: 0.93``, as in torchvision's
    fine-tuning tutorial). A pair whose name reads like a sentence ("improved from", "best") is
    not a metric. A split word, standing alone ("Train: loss=0.5 | Val: loss=0.6") or in a
    pair's name ("val Loss: 0.2 Acc: 0.9"), applies to the unmarked pairs after it on its line.
    """
    records = []
    epoch = None
    for line in re.split(r"[\r\n]+", text):
        m = MARK.search(line)
        if m:
            epoch, rest = int(m.group(1)), line[m.end():]
        elif epoch is None:
            continue
        else:
            rest = line
        context, last = None, 0
        for p in LINE_PAIR.finditer(rest):
            gap = SECTION.findall(rest[last:p.start()])
            if gap:
                context = SPLITS[gap[-1].lower()]
            last = p.end()
            words = p.group(1).split()
            if any(w.lower() in PROSE for w in words):
                continue
            # "finished train loss 0.5": the name starts at its split word.
            at = next((i for i, w in enumerate(words) if w.lower() in SPLITS), None)
            if at:
                words = words[at:]
            name = "_".join(words)
            own = SECTION.search(name.replace("_", " "))
            split = None if own else context
            if own:
                context = SPLITS[own.group(1).lower()]
            records.append((epoch, name, _number(p.group(2)), split))
    return records


def parse_fastai_table(text: str) -> list[tuple]:
    """Records from fastai's console table(s); a second table (``fine_tune``) continues the epochs."""
    records, cols, offset, seen = [], None, 0, []
    for line in text.splitlines():
        if FASTAI_HEADER.match(line):
            if seen:
                offset += max(seen) + 1
            cols, seen = line.split(), []
            continue
        toks = line.split()
        if cols and len(toks) == len(cols) and toks[0].isdigit():
            e = int(toks[0])
            seen.append(e)
            records += [(offset + e, c, _number(t), None) for c, t in zip(cols[1:], toks[1:])]
    return records


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise DataError(f"{p} is not a regular file")
    with p.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DataError(f"{p} is larger than {MAX_BYTES // 2 ** 20} MiB: not a training history")
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


def _looks_like_csv(text: str) -> bool:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return "," in first and any(c.strip().lower() == "epoch" for c in first.split(","))


def parse_csv_text(text: str, where: str = "CSV") -> tuple[list[dict], str, str, dict, list[str]]:
    """(rows, framework, kind, names, notes) from a history CSV with an epoch column."""
    reader = csv.reader(io.StringIO(text))
    header = [c.strip() for c in next(reader, [])]
    lower = [c.lower() for c in header]
    if "epoch" not in lower:
        raise DataError(f"{where}: a history CSV needs an 'epoch' column; found {header}")
    ei = lower.index("epoch")
    raw = [r for r in reader if any(c.strip() for c in r)]
    epochs = []
    records = []
    for r in raw:
        e = _number(r[ei]) if ei < len(r) else None
        if e is None or not math.isfinite(e):
            continue
        epochs.append(int(e))
        records += [(int(e), c, _number(v), None) for c, v in zip(header, r) if c and c.lower() != "epoch"]
    steps = any(c.endswith(("_step", "_epoch")) for c in lower)
    if "step" in lower or steps or len(set(epochs)) < len(epochs):
        framework, kind = "lightning", "Lightning CSVLogger metrics.csv"
    elif "train_loss" in lower and "valid_loss" in lower:
        framework, kind = "fastai", "fastai CSVLogger history"
    elif "loss" in lower and not any(c.startswith("train") for c in lower) and epochs and min(epochs) == 0:
        framework, kind = "keras", "Keras CSVLogger"
    else:
        framework, kind = "pytorch", "CSV history"
    rows, names, notes = assemble(records, framework)
    return rows, framework, kind, names, notes


def parse_csv_history(path: Path) -> list[dict]:
    return parse_csv_text(_read_text(Path(path)), str(path))[0]


def _from_json(data, p: Path) -> tuple[list[dict], str, str, dict, list[str]]:
    if isinstance(data, dict) and isinstance(data.get("history"), dict):
        data = data["history"]               # {"history": h.history, "params": ...}
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        records = [(i, k, _number(v), None) for k, vals in data.items() for i, v in enumerate(vals)
                   if k.lower() != "epoch"]
        rows, names, notes = assemble(records, "keras")
        return rows, "keras", "Keras history (JSON)", names, notes
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        if all("epoch" in r for r in data):
            rows = [{k: (v if k == "epoch" else (_number(v) if _number(v) is not None else math.nan))
                     for k, v in r.items() if k == "epoch" or not isinstance(v, (list, dict))} for r in data]
            return rows, "faceage", "faceage history", {}, []
        records = [(i + 1, k, _number(v), None) for i, r in enumerate(data) for k, v in r.items()]
        rows, names, notes = assemble(records)
        return rows, "pytorch", "JSON history (a list of epochs)", names, notes
    raise DataError(f"{p}: a JSON history is a list of per-epoch objects or Keras' history.history "
                    "(a dict of lists)")


def _latest(paths: list[Path]) -> Path:
    def key(q: Path):
        v = re.search(r"version_(\d+)", str(q))
        return (int(v.group(1)) if v else -1, q.stat().st_mtime)
    return max(paths, key=key)


def _tensorboard(root: Path) -> tuple[list[dict], str, str, dict, list[str]]:
    """Scalars from TensorBoard event files: Keras' ``train/``+``validation/``, Lightning's
    TensorBoardLogger (steps mapped to epochs by its ``epoch`` scalar), SummaryWriter's tags and
    ``add_scalars`` folders (``Loss_train/``)."""
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
        from tensorboard.util import tensor_util
    except ImportError:
        raise DataError("reading TensorBoard event files needs the tensorboard package: "
                        "pip install 'faceage[tensorboard]'") from None
    notes: list[str] = []
    if root.is_file():
        files = [root]
        base = root.parent
        if base.name.lower() in ("train", "validation", "val") and any(base.parent.glob("*/*tfevents*")):
            # One event file of Keras' pair: read the pair, or the verdict would lack validation.
            base = base.parent
            files = sorted(base.glob("*/*tfevents*"))
    else:
        base = root
        files = sorted(f for f in root.rglob("*tfevents*") if f.is_file())
    if not files:
        raise DataError(f"no TensorBoard event files in {root}")

    def experiment(f: Path) -> Path:
        d = f.parent
        if d != base and (d.name.lower() in SPLITS or "_" in d.name and d.name.rsplit("_", 1)[1].lower() in SPLITS):
            return d.parent                  # Keras' train/validation, add_scalars' Loss_train
        return d
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(experiment(f), []).append(f)
    exp = max(groups, key=lambda d: (int(m.group(1)) if (m := re.search(r"version_(\d+)", str(d))) else -1,
                                     max(f.stat().st_mtime for f in groups[d])))
    if len(groups) > 1:
        notes.append(f"read the latest of {len(groups)} TensorBoard runs: {exp}")
    series: dict[tuple[str, str | None], list[tuple[int, float]]] = {}
    for f in groups[exp]:
        acc = ea.EventAccumulator(str(f), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0, ea.IMAGES: 1,
                                                         ea.HISTOGRAMS: 1, ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1})
        try:
            acc.Reload()
        except Exception as exc:             # a truncated or foreign file
            raise DataError(f"cannot read TensorBoard file {f}: {exc}") from None
        d = f.parent.name if f.parent != exp else ""
        tags = acc.Tags()
        points: dict[str, list[tuple[int, float]]] = {}
        for tag in tags.get("scalars", []):
            points[tag] = [(e.step, float(e.value)) for e in acc.Scalars(tag)]
        for tag in tags.get("tensors", []):
            try:
                plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            except Exception:
                plugin = ""
            if plugin not in ("scalars", ""):
                continue
            vals = []
            for e in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                if arr.size == 1 and arr.dtype.kind in "fiu":
                    vals.append((e.step, float(arr.reshape(-1)[0])))
            if vals:
                points[tag] = vals
        for tag, pts in points.items():
            split = SPLITS.get(d.lower()) if d else None
            raw = tag
            if d and split is None and d.lower().startswith(re.sub(r"[/ ]", "_", tag).lower() + "_"):
                raw = d                       # add_scalars("Loss", {"train": ...}) -> Loss_train/Loss
            series.setdefault((raw, split), []).extend(pts)
    keras_layout = any(s for (_, s) in series) and any(r.lower().startswith("epoch_") for (r, _) in series)
    epoch_tag = next((pts for (r, s), pts in series.items() if r.lower() == "epoch" and s is None), None)
    records = []
    if epoch_tag and not keras_layout:
        # Lightning logs an "epoch" scalar at every logged step: map steps to epochs through it.
        import bisect
        marks = sorted(set(epoch_tag))
        steps = [s for s, _ in marks]
        for (raw, split), pts in series.items():
            for step, v in pts:
                i = max(0, bisect.bisect_right(steps, step) - 1)
                records.append((int(marks[i][1]), raw, v, split))
        framework, kind = "lightning", "Lightning TensorBoardLogger"
    else:
        val_steps = sorted({s for (raw, split), pts in series.items() for s, _ in pts
                            if (c := canonical_name(raw, split)) and c[0].startswith("val_")})
        train_n = max((len(pts) for (raw, split), pts in series.items()
                       if (c := canonical_name(raw, split)) and not c[0].startswith(("val_", "lr"))), default=0)
        import bisect
        by_val = bool(val_steps) and train_n > 1.5 * len(val_steps)
        if by_val:
            notes.append("training values were logged per step: each epoch ends at a validation point")
        for (raw, split), pts in series.items():
            for step, v in pts:
                e = bisect.bisect_left(val_steps, step) + 1 if by_val else step
                if by_val and e > len(val_steps):
                    continue                  # an unfinished epoch after the last validation
                records.append((e, raw, v, split))
        framework, kind = ("keras", "Keras TensorBoard logs") if keras_layout else ("pytorch", "TensorBoard event files")
    rows, names, more = assemble(records, framework)
    return rows, framework, kind, names, notes + more


def read_history(source: str | Path) -> History:
    """Reads any supported history (see the module docstring). Raises :class:`DataError` when no
    epoch can be read."""
    p = Path(source)
    if not p.exists():
        raise DataError(f"not found: {p}")
    names: dict[str, str] = {}
    notes: list[str] = []
    run_dir = None
    if p.is_dir():
        csvs = [] if (p / "history.json").exists() else sorted(q for q in p.glob("**/metrics.csv") if q.is_file())
        if (p / "history.json").exists():
            h = p / "history.json"
            try:
                data = json.loads(_read_text(h))
            except json.JSONDecodeError as exc:
                raise DataError(f"{h} is not valid JSON: {exc}") from None
            rows, framework, kind, names, notes = _from_json(data, h)
            framework, kind, run_dir = "faceage", "faceage run", p
        elif csvs:
            f = _latest(csvs)
            if len(csvs) > 1:
                notes.append(f"read the latest of {len(csvs)} logs: {f}")
            rows, framework, kind, names, more = parse_csv_text(_read_text(f), str(f))
            notes += more
        elif any(p.rglob("*tfevents*")):
            rows, framework, kind, names, notes = _tensorboard(p)
        else:
            raise DataError(f"{p} holds no history: expected a faceage run (history.json), a Lightning log "
                            "(metrics.csv) or TensorBoard event files")
    elif "tfevents" in p.name:
        rows, framework, kind, names, notes = _tensorboard(p)
    else:
        text = _read_text(p)
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p} is not valid JSON: {exc}") from None
            rows, framework, kind, names, notes = _from_json(data, p)
        elif p.suffix.lower() in (".csv", ".tsv") or _looks_like_csv(text):
            rows, framework, kind, names, notes = parse_csv_text(text, str(p))
        else:
            framework, kind = "keras", "Keras log"
            rows, names, notes = assemble([(r["epoch"], k, v, None) for r in parse_keras_log(text)
                                           for k, v in r.items() if k != "epoch"], "keras")
            if not rows and (recs := parse_fastai_table(text)):
                rows, names, notes = assemble(recs, "fastai")
                framework, kind = "fastai", "fastai console table"
            if not rows and (recs := parse_print_lines(text)):
                lightning = "v_num" in text or any(str(r[1]).lower().endswith(("_step", "_epoch")) for r in recs)
                framework = "lightning" if lightning else "pytorch"
                kind = "Lightning progress bar" if lightning else "training log (print lines)"
                rows, names, notes = assemble(recs, framework)
    rows = [r for r in rows if len(r) > 1]
    if not rows:
        raise DataError(f"no readable epochs in {p} (expected a faceage run, a Keras, Lightning, fastai or PyTorch "
                        "training log, a CSV with an epoch column, Keras' history JSON or TensorBoard event files)")
    return History(rows, kind, framework, p, names, run_dir, notes)


def load_history(source: str | Path) -> tuple[list[dict], str]:
    """Returns (rows, kind). Raises :class:`DataError` when no epoch can be read."""
    h = read_history(source)
    return h.rows, h.kind
