"""Drawing results on a photo: numbered boxes whose numbers match the table, labels sized to
the photo so they stay readable from a thumbnail to a 50 MP original."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_write_bytes
from .results import Face

BOX = (255, 40, 40)
# Formats Pillow writes: an annotated copy keeps its photo's format; others (HEIC, GIF) become PNG.
KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}


def face_label(f: Face) -> str:
    label = f"{f.number}: {f.age:.0f}" if f.age is not None else f"{f.number}: ?"
    if f.age_low is not None:
        label += f" ({f.age_low:.0f}-{f.age_high:.0f})"
    if f.gender:
        label += f", {f.gender} {f.gender_prob:.0%}"
    return label


def annotate(image: Image.Image, faces: list[Face]) -> Image.Image:
    """A copy with each face's box and a 'number: age (interval), gender' label drawn."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    short = min(out.size)
    line = max(2, round(short / 300))
    # Text about 1/40 of the photo's short side, never below 12 px: readable when the photo is
    # shown fitted to a screen, whatever its resolution.
    font = ImageFont.load_default(size=max(12, round(short / 40)))
    for f in faces:
        draw.rectangle(f.box, outline=BOX, width=line)
    for f in faces:   # labels after boxes so no box is drawn over a label
        label = face_label(f)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        w, h = right - left + 2 * line, bottom - top + 2 * line
        x = min(max(0, f.box[0]), max(0, out.width - w))            # inside the photo horizontally
        y = f.box[1] - h if f.box[1] - h >= 0 else min(f.box[3], out.height - h)  # above, else below the box
        draw.rectangle((x, y, x + w, y + h), fill=BOX)
        draw.text((x + line - left, y + line - top), label, fill=(255, 255, 255), font=font)
    return out


def annotated_path(photo: Path, root: Path | None, out_dir: Path) -> Path:
    """Where the annotated copy of ``photo`` goes: ``out_dir`` mirrors the folders under ``root``
    (the folder given on the command line), so two ``pic.jpg`` in different folders never clash."""
    rel = photo.relative_to(root) if root is not None else Path(photo.name)
    suffix = photo.suffix.lower() if photo.suffix.lower() in KEEP_FORMAT else ".png"
    return out_dir / rel.parent / f"{photo.stem}.annotated{suffix}"


def save_annotated(img: Image.Image, path: Path) -> None:
    """Atomic write (a crash never leaves half a file) in the format the suffix names."""
    buf = io.BytesIO()
    fmt = KEEP_FORMAT.get(path.suffix.lower(), "PNG")
    img.save(buf, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
