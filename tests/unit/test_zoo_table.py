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
