"""`faceage models` lists the zoo from a static table (no torch import); the table must equal
what the registry really builds, so it cannot drift."""
from __future__ import annotations

import subprocess
import sys

from faceage.models.zoo import ZOO, registry_facts, table_source


def test_static_zoo_table_matches_the_registry():
    real = registry_facts()
    assert list(ZOO) == list(real), "models/zoo.py lists other models than the registry: regenerate it (table_source)"
    for name, facts in real.items():
        assert ZOO[name] == facts, f"models/zoo.py is stale for {name}: paste table_source()'s output into it"
    assert "ZooFacts('keras-baseline-28', 'reference', 203434" in table_source()


def test_models_listing_imports_no_torch():
    code = ("import sys; from faceage.cli import main; main(['models']); "
            "heavy = sorted(m for m in ('torch', 'timm', 'lightning', 'torchvision') if m in sys.modules); "
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert "keras-baseline-28      reference         203,434" in r.stdout
    assert "recipes (faceage train --config NAME" in r.stdout and "keras-baseline-28" in r.stdout.split("recipes")[-1]


def test_recipes_lists_every_shipped_recipe_and_prints_one_by_name():
    from faceage.recipebook import RECIPES_DIR
    run = lambda *args: subprocess.run([sys.executable, "-m", "faceage", "recipes", *args], capture_output=True, text=True)
    listing = run()
    assert listing.returncode == 0, listing.stderr
    shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert len(shipped) >= 10
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:len(shipped) + 1]] == shipped
    for alias in ("best", "default"):           # README: `best` and `default` name mobilenetv2-dldl
        assert f"{alias} " in listing.stdout and "the same file as mobilenetv2-dldl" in listing.stdout
        assert run(alias).stdout == run("mobilenetv2-dldl").stdout
    one = run("faceres-mobilenet")
    assert one.returncode == 0 and "name: faceres_mobilenet" in one.stdout
    missing = run("no-such-recipe")
    assert missing.returncode != 0 and "no-such-recipe" in missing.stderr and "Traceback" not in missing.stderr
