"""Command line: parse -> config -> call the library. No logic of its own."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

from .errors import ConfigError, FaceageError


def _cmd_data_inspect(args) -> int:
    from .data.manifest import NoUsableImageError
    from .data.readers import read_dataset, verify_images
    from .labels import GENDERS, RACES

    try:
        manifest, report = read_dataset(args.path, y_is=args.y_is)
        if not args.no_verify:
            verify_images(manifest, report)
    except NoUsableImageError as exc:     # the reasons are in the message; --report still gets the list
        if args.report:
            exc.save(args.report)
        raise
    s = manifest.samples
    info: dict = {"path": args.path, "kind": manifest.kind, "usable": len(s), "skipped": len(report)}
    ages = [x.age for x in s if x.age is not None]
    if ages:
        dec = Counter(min(int(a // 10), 10) for a in ages)
        info["age_histogram"] = {(f"{d * 10}-{d * 10 + 9}" if d < 10 else "100+"): dec[d] for d in sorted(dec)}
        info["age_range"] = [min(ages), max(ages)]
    if manifest.has("gender"):
        info["gender"] = {GENDERS[g]: n for g, n in sorted(Counter(x.gender for x in s if x.gender >= 0).items())}
    if manifest.has("race"):
        info["race"] = {RACES[r]: n for r, n in sorted(Counter(x.race for x in s if x.race >= 0).items())}
    if manifest.class_names:
        counts = Counter(x.label for x in s)
        info["classes"] = {name: counts[i] for i, name in enumerate(manifest.class_names)}
    if args.report:
        report.write(args.report)
    if args.json:
        info["skipped_by_reason"] = {r: len(v) for r, v in report.by_reason.items()}
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.path}: {manifest.kind} dataset, {len(s)} usable images")
    if ages:
        top = max(info["age_histogram"].values())
        print(f"age: {min(ages):g}-{max(ages):g} years")
        for k, n in info["age_histogram"].items():
            print(f"  {k:>7} {n:>6}  {'#' * max(1, round(40 * n / top))}")
    for key in ("gender", "race", "classes"):
        if key in info:
            total = sum(info[key].values())
            print(f"{key}: " + ", ".join(f"{k} {n} ({n / total:.0%})" for k, n in info[key].items()))
    print(report.summary())
    if args.report:
        print(f"full list of skipped files: {args.report}")
    return 0


def _cmd_models(args) -> int:
    if args.name:
        from .models.registry import create_model, get_entry
        from .models.summary import format_summary
        get_entry(args.name)
        # Never download for a summary: the layer table does not depend on the weights.
        if args.depth < 1:
            raise ConfigError(f"--depth must be at least 1 (the nesting depth of the layer table); got {args.depth}")
        print(format_summary(create_model(args.name, pretrained="none"), max_depth=args.depth))
        return 0
    # A static table of the zoo (models/zoo.py, checked against the registry by the tests): no
    # torch import, no model built, so the list comes in about a second.
    from .models.zoo import ZOO, zoo_names
    from .recipebook import recipe_names
    print(f"{'name':<22} {'family':<12} {'params':>12} {'trainable':>12} {'input':>10}  tasks / description")
    for name in zoo_names(args.pattern):
        f = ZOO[name]
        print(f"{name:<22} {f.family:<12} {f.params:>12,} {f.trainable:>12,} {f'{f.input_size}x{f.input_size}x{f.channels}':>10}  "
              f"{'+'.join(f.tasks)}: {f.description}")
    print(f"\nrecipes (faceage train --config NAME; `faceage recipes` describes them): {', '.join(recipe_names())}")
    return 0


def _cmd_recipes(args) -> int:
    from .recipebook import RECIPES_DIR, find_recipe, recipe_description, recipe_names

    if args.name:
        print(find_recipe(args.name).read_text(encoding="utf-8"), end="")
        return 0
    import yaml
    print(f"{'recipe':<26} {'model':<22} {'epochs':>6}  description")
    for name in recipe_names():
        data = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        model = (data.get("model") or {}).get("name", "utk-custom-128")
        epochs = (data.get("train") or {}).get("epochs", 10)
        print(f"{name:<26} {model:<22} {epochs:>6}  {recipe_description(name)}")
    print(f"\nfaceage train --config NAME (from any folder), or --config PATH.yaml for your own; shipped in {RECIPES_DIR}")
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .training.fit import train

    epochs = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    if args.resume:
        if args.config or args.split:
            print("faceage: error: --resume continues a run with its saved config and split; drop --config/--split "
                  "(only --epochs N may be given, to train a finished run longer)", file=sys.stderr)
            return 2
        summary = train(None, args.resume, data=args.data, resume=True, overrides=args.overrides + epochs)
        out = args.resume
    else:
        if not args.config and not args.overrides:
            print("faceage: error: give --config NAME (a recipe: `faceage recipes` lists them) or --config PATH.yaml "
                  "(and/or key=value overrides), or --resume RUN_DIR", file=sys.stderr)
            return 2
        cfg = load_config(args.config, args.overrides + epochs)
        if args.overrides and os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
            from .training.resolve import ineffective_overrides      # said once, by the first process
            for message in ineffective_overrides(args.config, epochs, args.overrides):
                print(f"warning: {message}", file=sys.stderr)
        if args.split is not None:          # an empty --split is an error (config.validate), not "none given"
            cfg.data.split_file = args.split
        out = args.out or f"runs/{cfg.model.name}"
        summary = train(cfg, out, data=args.data, overwrite=args.overwrite)
    if summary.get("rank"):      # DDP: a rank > 0 (its run directory may be on another machine); rank 0 reports
        return 0
    best = summary["best"]
    print(f"done: {summary['epochs_run']} epoch(s), best epoch {summary['best_epoch']}"
          + (f" ({summary['monitor']} {best.get(summary['monitor'], float('nan')):.4f})" if best else "")
          + f", {summary['train_seconds']:.0f}s; run directory {out}")
    from .evaluation.diagnose import diagnose_history
    from .evaluation.histories import read_history
    print(diagnose_history(read_history(out)).format())
    return 0


def _cmd_diagnose(args) -> int:
    from .evaluation.diagnose import diagnose_history, plot_diagnosis
    from .evaluation.histories import read_history

    h = read_history(args.source)
    rows, kind = h.rows, h.kind
    d = diagnose_history(h)
    if args.plot:
        plot_diagnosis(rows, d, args.plot)
    if args.json:
        print(json.dumps({"source": args.source, "kind": kind, **d.to_dict()}, indent=2, default=float))
    else:
        print(f"{args.source}: {kind}, {len(rows)} epochs")
        print(d.format())
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _cmd_compare(args) -> int:
    from .evaluation.compare import compare

    _, md = compare(args.runs, args.out)
    print(md)
    if args.out:
        print(f"\nwritten: {args.out}/compare.csv, compare.html, curves.png")
    return 0


def _cmd_ablate(args) -> int:
    from .evaluation.compare import compare
    from .training.ablate import PRESETS, ablate, parse_variant

    variants = [parse_variant(v) for v in args.variant]
    base = args.config
    if args.preset:
        preset = PRESETS[args.preset]
        base = base or preset["base"]
        variants = preset["variants"] + variants
    if not base or not variants:
        print("faceage: error: give --config BASE.yaml and at least one --variant, or --preset NAME", file=sys.stderr)
        return 2
    out = args.out or f"runs/ablate-{Path(base).stem}"
    runs = ablate(base, variants, out, data=args.data, common=args.overrides, epochs=args.epochs, split=args.split)
    _, md = compare(runs, out)
    print(md)
    print(f"\nwritten: {out}/compare.csv, compare.html, curves.png")
    return 0


def detection_options(args) -> dict:
    """The detection flags shared by `predict` and `serve`, as Predictor keyword arguments."""
    return {"detector": "skip" if args.no_detect else None, "det_size": args.det_size, "det_thresh": args.det_thresh,
            "min_face_size": args.min_face_size, "max_num_faces": args.max_faces}


def _cmd_predict(args) -> int:
    if args.engine != "local" or args.out or args.address:   # Ray Data into a Parquet table
        from .distributed.ray_predict import run_cli
        return run_cli(args)
    from tqdm import tqdm

    from .data.readers import IMAGE_SUFFIXES
    from .inference.annotate import annotate, annotated_path, save_annotated
    from .inference.inputs import VIDEO_SUFFIXES, is_video, parse_interval
    from .inference.output import Writer, collect_inputs
    from .inference.predictor import Predictor

    try:
        every = parse_interval(args.every)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1 face per model batch; got {args.batch}")
    if args.annotate and Path(args.annotate).exists() and not Path(args.annotate).is_dir():
        raise ConfigError(f"--annotate {args.annotate} is a file: give a folder for the annotated copies")
    files = collect_inputs(args.paths, IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        print("faceage: error: no image or video files found in the given paths", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model, batch_size=args.batch, **detection_options(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    root_of = dict(files)
    fmt = "json" if args.json else "jsonl" if args.jsonl else "csv" if args.csv else "text"
    writer = Writer(fmt)
    bar = tqdm(total=len(files), desc="photos", unit="photo", disable=args.no_progress or len(files) < 2)
    failed = 0

    def emit(r, photo: Path, stem_suffix: str = "") -> None:
        nonlocal failed
        failed += r.error is not None
        writer.write(r)
        if args.annotate and r.image is not None:
            target = annotated_path(photo.with_name(photo.stem + stem_suffix + photo.suffix), root_of[photo], Path(args.annotate))
            save_annotated(annotate(r.image, r.faces), target)

    photos = [f for f, _ in files if not is_video(f)]
    results = predictor.iter_analyze(photos, return_images=bool(args.annotate), photos_per_batch=max(1, args.batch // 2))
    for photo, r in zip(photos, results):
        emit(r, photo)
        bar.update(1)
    for video in (f for f, _ in files if is_video(f)):
        from .inference.inputs import VideoError
        try:
            for r in predictor.iter_video(video, every, return_images=bool(args.annotate)):
                emit(r, video, f"_{r.time:.1f}s" if args.annotate else "")
        except VideoError as exc:
            from .inference.results import PhotoResult
            emit(PhotoResult(0, str(video), [], error=str(exc), error_type="VideoError"), video)
        bar.update(1)
    bar.close()
    writer.close()
    if args.annotate:
        print(f"annotated copies written to {args.annotate}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_export(args) -> int:
    from .inference.export import export_onnx

    if not args.int8 and (args.data or args.int8_faces is not None or args.int8_max_diff is not None):
        raise ConfigError("--data, --int8-faces and --int8-max-diff are about an int8 model: add --int8")
    r = export_onnx(args.model, args.out, metrics=args.metrics, tta=args.tta,
                    interval_temperature=args.interval_temperature, calibration=args.calibration,
                    int8=args.int8, int8_data=args.data, int8_faces=args.int8_faces,
                    int8_max_diff=args.int8_max_diff)
    print(f"wrote {r['onnx']} ({r['size_mb']} MB) and {r['sidecar']}")
    print(f"verified with onnxruntime at batch sizes {r['batches_checked']}: max abs diff vs torch {r['max_abs_diff']:.2e} "
          f"(tolerance {r['tolerance']:g})" + (" (the float graph)" if args.int8 else ""))
    if args.int8:
        q, c = r["quantization"], r["quantization"]["check"]
        line = f"int8: ranges fitted on {q['calibration_faces']} faces; on {c['faces']} other faces against the float model:"
        if "age_mean_abs_diff" in c:
            line += f" age differs by {c['age_mean_abs_diff']:.2f} years on average (at most {c['age_max_abs_diff']:.1f})"
        if "gender_agreement" in c:
            line += f", gender agrees on {c['gender_agreement']:.1%}"
        print(line)
    return 0


def _cmd_serve(args) -> int:
    from .serve.settings import ServeSettings, cpu_cores
    if args.workers is not None and not 1 <= args.workers <= 4 * cpu_cores():
        raise ConfigError(f"--workers must be from 1 to {4 * cpu_cores()} (4 per CPU core on this machine); got {args.workers}")
    workers = {"workers": args.workers} if args.workers is not None else {}
    settings = ServeSettings(model=args.model, host=args.host, port=args.port, max_file_mb=args.max_file_mb,
                             max_files=args.max_files, max_megapixels=args.max_megapixels,
                             max_request_megapixels=args.max_request_megapixels, upload_timeout_s=args.upload_timeout,
                             max_pending_mb=args.max_pending_mb,
                             queue_timeout_s=args.timeout, predictor_options=detection_options(args), **workers)
    from .serve.server import serve
    return serve(settings)


def _recorded_y_is(model: str) -> str | None:
    """What a run trained with said its .npz's ``y`` holds (``data.y_is``), so evaluating the run
    on the same arrays needs no flag."""
    from .config import load_run_config
    for run in (Path(model), Path(model).parent):
        if (run / "config.yaml").is_file():
            try:
                return load_run_config(run).data.y_is
            except FaceageError:
                return None
    return None


def _cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate, format_report
    from .training.fit import default_data_path

    from .inference.predictor import DEFAULT_MODEL
    model = args.model or str(DEFAULT_MODEL)
    m = evaluate(model, args.data or default_data_path(), split=args.split, json_path=args.json,
                 split_file=args.split_file, y_is=args.y_is or _recorded_y_is(model))
    print(format_report(m))
    if args.json:
        print(f"metrics written to {args.json}")
    return 0


def _cmd_teach(args) -> int:
    from .training.distill import make_soft_targets
    from .training.fit import default_data_path

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1; got {args.batch_size}")
    r = make_soft_targets(args.teachers, args.data or default_data_path(), args.out, cache_dir=args.cache_dir,
                          batch_size=args.batch_size)
    print(f"wrote {r['out']}: soft targets for {r['images']} images from {len(r['teachers'])} teacher(s)")
    if "mae_vs_labels" in r:
        agree = f", gender agrees with the label on {r['gender_agreement']:.1%}" if "gender_agreement" in r else ""
        print(f"against the labels (optimistic where the teachers trained on these images): MAE "
              f"{r['mae_vs_labels']:.2f}{agree}")
    print(f"train a student with: faceage train --config RECIPE distill.targets={r['out']} distill.weight=0.5")
    return 0


def _cmd_calibrate(args) -> int:
    from .inference.calibration import calibrate
    from .training.fit import default_data_path

    prior = args.age_prior
    if prior is not None and prior != "auto":
        try:
            prior = float(prior)
        except ValueError:
            prior = -1.0
        if not 0 <= prior <= 1:
            raise ConfigError(f"--age-prior must be 'auto' or a strength from 0 to 1; got {args.age_prior!r}")
    if not (math.isfinite(args.mae_budget) and 0 <= args.mae_budget <= 100):
        raise ConfigError(f"--mae-budget must be a percentage from 0 to 100; got {args.mae_budget}")
    r = calibrate(args.model, args.data or default_data_path(), split=args.split, split_file=args.split_file,
                  cache_dir=args.cache_dir, age_prior=prior, mae_budget=args.mae_budget / 100)
    print(f"fitted on {r['n']} faces ({r['scope']})")
    for tta in ("none", "flip"):
        if "age_prior_strength" in r:
            sweep = {row["strength"]: row for row in r["prior_sweep"][tta]}
            a, b = sweep[0.0], sweep[r["age_prior_strength"][tta]]
            print(f"  tta {tta}: age prior strength {r['age_prior_strength'][tta]:.2f}: MAE {a['mae']:.3f} -> "
                  f"{b['mae']:.3f}, balanced MAE {a['balanced_mae']:.3f} -> {b['balanced_mae']:.3f}" +
                  (f", MAE 60+ {a['mae_60plus']:.2f} -> {b['mae_60plus']:.2f}" if a["mae_60plus"] is not None else ""))
        print(f"  tta {tta}: 90% interval coverage {r['coverage_before'][tta]:.1%} -> {r['coverage_after'][tta]:.1%} "
              f"at interval temperature {r['interval_temperature'][tta]:.3f}")
        if "gender_bands" in r:
            bands = r["gender_bands"][tta]
            names = [f"{b['from']:.0f}-{nxt['from'] - 1:.0f}" for b, nxt in zip(bands, bands[1:])] + [f"{bands[-1]['from']:.0f}+"]
            ece = r["gender_calibration_error"][tta]
            print(f"  tta {tta}: gender calibration error {ece['before']:.1%} -> {ece['after']:.1%}; by predicted age: " +
                  ", ".join(f"{name} confidence {b['confidence_before']:.2f} -> {b['confidence_after']:.2f} "
                            f"(accuracy {b['accuracy']:.2f}, T {b['temperature']:.2f})" for name, b in zip(names, bands)))
    print(f"wrote {r['path']}: loading {r['checkpoint']} and faceage export now use it")
    return 0


def add_detection_arguments(parser) -> None:
    """Detection flags, named as in InsightFace (det_size, det_thresh, max_num) and DeepFace (skip)."""
    g = parser.add_argument_group("face detection")
    g.add_argument("--det-size", type=int, metavar="PX", help="detect on one copy whose longer side is PX "
                   "(default: automatic, faces of any size in photos of any size)")
    g.add_argument("--det-thresh", type=float, default=0.8, help="detection score threshold (default 0.8)")
    g.add_argument("--min-face-size", type=int, default=0, metavar="PX", help="ignore faces smaller than PX pixels")
    g.add_argument("--max-faces", type=int, default=0, metavar="N", help="keep only the N largest faces (default: all)")
    g.add_argument("--no-detect", action="store_true", help="every image is already a face crop (e.g. UTKFace "
                   "chips): the whole image goes to the model")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceage", description="Train, diagnose and run CNN age/gender estimators.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"faceage {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    ins = data.add_parser("inspect", help="counts, age histogram, gender/race balance, skipped files")
    ins.add_argument("path", help="UTKFace folder, .tar.gz/.zip archive, CSV manifest, class-per-subfolder folder, "
                     ".npz arrays, .parquet/.arrow file or Hugging Face save_to_disk folder")
    ins.add_argument("--y-is", choices=("age", "label", "onehot"),
                     help="what a .npz's y holds (data.y_is): needed when y is whole numbers")
    ins.add_argument("--json", action="store_true", help="print the summary as JSON")
    ins.add_argument("--report", metavar="FILE", help="write every skipped file with its reason (JSON)")
    ins.add_argument("--no-verify", action="store_true", help="do not decode images (faster; misses corrupt files)")
    ins.set_defaults(func=_cmd_data_inspect)

    mod = sub.add_parser("models", help="list the model zoo, or show one model's layer table")
    mod.add_argument("name", nargs="?", help="a model name: print its layer table")
    mod.add_argument("--pattern", default="*", help="filter names (shell wildcard)")
    mod.add_argument("--depth", type=int, default=4, help="layer-table nesting depth (default 4)")
    mod.set_defaults(func=_cmd_models)

    from .recipebook import recipe_names
    recipes = ", ".join(recipe_names())
    rc = sub.add_parser("recipes", help="list the shipped recipes (faceage train --config NAME), or print one")
    rc.add_argument("name", nargs="?", help="a recipe name: print its YAML")
    rc.set_defaults(func=_cmd_recipes)

    tr = sub.add_parser("train", help="train a model from a recipe")
    tr.add_argument("--config", metavar="NAME|PATH", help=f"a shipped recipe by name ({recipes}) or a recipe YAML file")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. optim.lr=1e-4")
    tr.add_argument("--data", help="dataset (default: data.path, else $FACEAGE_DATA, else ../shared/datasets/utkface/UTKFace)")
    tr.add_argument("--out", help="run directory (default runs/MODEL)")
    tr.add_argument("--split", metavar="FILE", help="reuse a split.csv (or a run directory's) so runs are comparable")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped (a finished "
                    "one is left as is; add --epochs N to train it longer)")
    tr.add_argument("--epochs", type=int, metavar="N", help="train.epochs=N; with --resume, extends the run to N epochs (never fewer than it "
                    "was planned for: its learning-rate schedule was laid out for those)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    tr.set_defaults(func=_cmd_train)

    dg = sub.add_parser("diagnose", help="is it overfitting, since when, and what to try")
    dg.add_argument("source", help="a faceage run directory, or a Keras, Lightning, fastai or PyTorch log: fit/print "
                    "output (text), CSV, Keras history JSON, a lightning_logs folder or TensorBoard event files")
    dg.add_argument("--json", action="store_true", help="print verdict, qualifiers, epochs, evidence and remedies as JSON")
    dg.add_argument("--plot", metavar="FILE", help="write the curves with the onset and best epoch marked (PNG)")
    dg.set_defaults(func=_cmd_diagnose)

    cp = sub.add_parser("compare", help="runs side by side: table (markdown, HTML, CSV) and overlaid curves")
    cp.add_argument("runs", nargs="+", help="run directories")
    cp.add_argument("--out", help="folder for compare.csv, compare.html and curves.png")
    cp.set_defaults(func=_cmd_compare)

    ab = sub.add_parser("ablate", help="train variants of one recipe on the same split, then compare them")
    ab.add_argument("--config", metavar="NAME|PATH", help="base recipe: a shipped recipe's name or a YAML file")
    ab.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...", help="a variant (repeatable)")
    from .training.ablate import PRESETS
    ab.add_argument("--preset", choices=sorted(PRESETS), help="a built-in set of variants")
    ab.add_argument("--epochs", type=int, help="override train.epochs for every variant")
    ab.add_argument("--data", help="dataset")
    ab.add_argument("--split", metavar="FILE", help="split file for every variant (default: the first variant's)")
    ab.add_argument("--out", help="folder for the variants' run directories (default runs/ablate-BASE)")
    ab.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every variant")
    ab.set_defaults(func=_cmd_ablate)

    pr = sub.add_parser("predict", help="ages and genders for the faces in photos and videos")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image or video files, or folders (searched recursively)")
    pr.add_argument("--model", help="run directory, checkpoint or .onnx (default: the shipped model)")
    fmt = pr.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array, one object per photo: path, faces, error, note")
    fmt.add_argument("--jsonl", action="store_true", help="JSON Lines: one object per photo, printed as each finishes")
    fmt.add_argument("--csv", action="store_true", help="one row per face (a photo without faces: one row with a note)")
    pr.add_argument("--annotate", metavar="DIR", help="write copies with numbered boxes and labels drawn; folders "
                                                      "given as PATH are mirrored under DIR")
    pr.add_argument("--every", default="1s", metavar="TIME", help="for videos: one frame every TIME (default 1s; "
                                                                  "e.g. 500ms, 2s, 1m)")
    pr.add_argument("--batch", type=int, default=32, help="faces per model batch (default 32)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_detection_arguments(pr)
    from .distributed.ray_predict import add_arguments as add_ray_arguments
    add_ray_arguments(pr)
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="export a trained model (ONNX + sidecar JSON), verified against torch")
    ex.add_argument("model", help="run directory or checkpoint")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--out", help="output .onnx (default: RUN_DIR/model.onnx)")
    ex.add_argument("--metrics", help="`faceage evaluate --json` output whose headline numbers go into the sidecar "
                                      "(default: metrics.json beside the checkpoint, if any)")
    ex.add_argument("--tta", choices=["none", "flip"], help="test-time augmentation in the graph: 'flip' averages "
                                                             "each face with its mirror image (default: the checkpoint's)")
    ex.add_argument("--interval-temperature", type=float, metavar="T",
                    help="temperature of the 90%% age interval (default: what faceage calibrate fitted to this "
                         "checkpoint, else 1)")
    ex.add_argument("--calibration", metavar="FILE",
                    help="apply this calibration file although another checkpoint's (e.g. carry a split run's "
                         "calibration to the same recipe trained on all the data)")
    ex.add_argument("--int8", action="store_true",
                    help="write an int8 model (8-bit convolutions): 1.3-1.6x faster per face on a CPU with VNNI "
                         "(BENCHMARKS.md 11h), slower on CPUs without; its ranges are fitted on face crops (default out: RUN_DIR/model-int8.onnx)")
    ex.add_argument("--data", help="with --int8: the faces to fit the ranges on (default: $FACEAGE_DATA or the shared "
                                   "UTKFace; the run's validation faces when its split.csv names them)")
    ex.add_argument("--int8-faces", type=int, metavar="N", help="with --int8: how many faces fit the ranges (default 400)")
    ex.add_argument("--int8-max-diff", type=float, metavar="YEARS",
                    help="with --int8: refuse the int8 model (exit 2, nothing written) if its ages differ from the float "
                         "model's by more than YEARS on average on the check faces (default: only a warning above 1)")
    ex.set_defaults(func=_cmd_export)

    ca = sub.add_parser("calibrate", help="fit the 90%% age interval to 90%% coverage on the validation split, and the gender "
                            "confidence to the accuracy by age")
    ca.add_argument("model", help="run directory or checkpoint (CHECKPOINT.calibration.json is written beside it, "
                         "e.g. best.calibration.json)")
    ca.add_argument("--data", help="dataset (default: $FACEAGE_DATA or the shared UTKFace)")
    ca.add_argument("--split", default="val", choices=["train", "val", "test"],
                    help="which part of the run's split to fit on (default val: held out from training)")
    ca.add_argument("--split-file", help="split.csv (or a run directory's) to take --split from (default: the one beside the checkpoint)")
    ca.add_argument("--cache-dir", help="decode cache folder (default: $FACEAGE_CACHE or ~/.cache/faceage)")
    ca.add_argument("--age-prior", metavar="auto|S",
                    help="also correct the estimates' pull toward common ages: read ages from softmax(logits - S * "
                         "log training-age distribution), S from 0 (as trained) to 1; 'auto' takes the largest S "
                         "whose validation MAE stays within --mae-budget of the uncorrected one (default: off)")
    ca.add_argument("--mae-budget", type=float, default=1.0, metavar="PERCENT",
                    help="with --age-prior auto: validation MAE it may cost, in percent (default 1)")
    ca.set_defaults(func=_cmd_calibrate)

    sv = sub.add_parser("serve", help="a local web page and HTTP API for a model (FastAPI + uvicorn)")
    sv.add_argument("--model", help="run directory, checkpoint or exported .onnx (default: the shipped model)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=None,
                    help="inference threads; requests beyond them queue (default: one per CPU core)")
    sv.add_argument("--max-file-mb", type=float, default=10.0, help="largest accepted upload per file (default 10)")
    sv.add_argument("--max-files", type=int, default=16, help="most files per request (default 16)")
    sv.add_argument("--max-megapixels", type=float, default=50.0, help="largest accepted image (default 50)")
    sv.add_argument("--max-request-megapixels", type=float, default=200.0,
                    help="all images of one request together (default 200)")
    sv.add_argument("--upload-timeout", type=float, default=60.0,
                    help="seconds a request body may take to arrive before a 408 (default 60)")
    sv.add_argument("--max-pending-mb", type=float, default=160.0,
                    help="uploaded bytes all requests together may hold; beyond it 503 (default 160)")
    sv.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a request may wait for a worker before a 503 (default 30)")
    add_detection_arguments(sv)
    sv.set_defaults(func=_cmd_serve)

    ev = sub.add_parser("evaluate", help="score a trained model")
    ev.add_argument("--model", help="run directory, checkpoint or exported .onnx (default: the shipped model)")
    ev.add_argument("--data", help="dataset to score (default: $FACEAGE_DATA or the shared UTKFace)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which part of the run's split (default test); a foreign folder is scored whole")
    ev.add_argument("--split-file", help="split.csv (or a run directory's) to take --split from (default: the one beside the checkpoint)")
    ev.add_argument("--y-is", choices=("age", "label", "onehot"),
                    help="what a .npz's y holds (data.y_is; default: what the run trained with)")
    ev.add_argument("--json", metavar="FILE", help="write metrics as JSON (plots go beside it)")
    ev.set_defaults(func=_cmd_evaluate)

    te = sub.add_parser("teach", help="teachers' soft targets for distilling them into one student (distill.targets)")
    te.add_argument("teachers", nargs="+", metavar="TEACHER", help="run directories or checkpoints with an age_dist head")
    te.add_argument("--out", required=True, help="the .npz to write (teachers' answers resume from OUT.parts/)")
    te.add_argument("--data", help="dataset (default: $FACEAGE_DATA or the shared UTKFace); every usable image is taught")
    te.add_argument("--cache-dir", help="decode cache folder (default: $FACEAGE_CACHE or ~/.cache/faceage)")
    te.add_argument("--batch-size", type=int, default=64)
    te.set_defaults(func=_cmd_teach)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import FaceageError

    parser = build_parser()
    # Overrides may sit anywhere among the options (`train --config X a.b=1 --epochs 2 c.d=3`):
    # argparse takes one contiguous run of positionals, so later key=value words come back unknown.
    args, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if u.startswith("-") or "=" not in u]
    if stray or (unknown and not hasattr(args, "overrides")):
        parser.parse_args(argv)           # argparse's own message and exit 2
    if unknown:
        args.overrides = list(args.overrides) + unknown
    try:
        return args.func(args)
    except FaceageError as exc:
        print(f"faceage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:          # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # A path that is not what it must be (a file where a folder is needed, a folder where a
        # file is, no permission): one line naming it, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"faceage: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("faceage: interrupted (a training run can be continued with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
