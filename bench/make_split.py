"""Write the fixed benchmark split of the shared UTKFace (70/15/15, stratified, seed 42).

    .venv/bin/python bench/make_split.py [DATA] [OUT]
"""
import sys

from faceage.data.readers import read_dataset
from faceage.data.split import make_split, save_split

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/utkface/UTKFace"
out = sys.argv[2] if len(sys.argv) > 2 else "bench/utkface_split.csv"
manifest, report = read_dataset(data)
assignment = make_split(manifest.samples, (0.70, 0.15, 0.15), seed=42)
save_split(assignment, out)
counts = {k: sum(1 for v in assignment.values() if v == k) for k in ("train", "val", "test")}
print(f"{out}: {counts} ({len(report)} files skipped)")
