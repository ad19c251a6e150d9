"""Pack the shared UTKFace for the GPU machine, which cannot see ../shared.

The device tool carries at most 64 MiB, so every usable image is re-encoded as small WebP
(128 px at quality 90 is ~2.6 KB; 150 px at quality 80, ~2.2 KB) under its original file name (Pillow reads by content, not by name),
which keeps the keys of bench/utkface_split.csv valid. Models trained there see these
re-encoded pixels; BENCHMARKS.md says so next to every number measured on them.

    .venv/bin/python bench/pack_for_device.py [DATA] [OUT_DIR] [SIZE] [rgb|gray] [QUALITY]
"""
import sys
from pathlib import Path

from PIL import Image

from faceage.data.readers import read_dataset

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/utkface/UTKFace"
out = Path(sys.argv[2] if len(sys.argv) > 2 else ".gpu/utk128")
size = int(sys.argv[3]) if len(sys.argv) > 3 else 128
mode = "L" if len(sys.argv) > 4 and sys.argv[4] == "gray" else "RGB"
quality = int(sys.argv[5]) if len(sys.argv) > 5 else 90
out.mkdir(parents=True, exist_ok=True)
manifest, _ = read_dataset(data)
for s in manifest.samples:
    dest = out / s.key
    if not dest.exists():
        img = Image.open(s.path).convert(mode).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        img.save(dest, "WEBP", quality=quality)
size = sum(p.stat().st_size for p in out.iterdir())
print(f"{out}: {len(manifest.samples)} images, {size / 2**20:.1f} MiB")
