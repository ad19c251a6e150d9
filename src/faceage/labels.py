"""Label vocabularies shared by data readers, heads and evaluation."""
from __future__ import annotations

MIN_AGE, MAX_AGE = 0, 120

GENDERS = ("male", "female")          # UTKFace: 0 = male, 1 = female
RACES = ("White", "Black", "Asian", "Indian", "Others")

# The ten classes of the reference classifiers: 0-10, 11-20, ..., 81-90, 91+.
# A bin is given by its inclusive lower edge; the upper edge is the next bin's lower edge - 1.
DEFAULT_AGE_BIN_EDGES = (0, 11, 21, 31, 41, 51, 61, 71, 81, 91)

# Bands used for "MAE per age band" in evaluation reports.
AGE_BANDS = (("0-12", 0, 12), ("13-19", 13, 19), ("20-39", 20, 39), ("40-59", 40, 59), ("60+", 60, 10_000))

# The distribution head covers single years 0..DIST_MAX_AGE; the last class means "100 or older".
DIST_MAX_AGE = 100


def bin_labels(edges: tuple[int, ...] | list[int]) -> list[str]:
    """Human names for age bins, e.g. ``['0-10', '11-20', ..., '91+']``."""
    names = []
    for i, lo in enumerate(edges):
        names.append(f"{lo}-{edges[i + 1] - 1}" if i + 1 < len(edges) else f"{lo}+")
    return names


def age_to_bin(age: float, edges) -> int:
    """Index of the bin holding ``age`` (ages below the first edge go to bin 0)."""
    idx = 0
    for i, lo in enumerate(edges):
        if age >= lo:
            idx = i
    return idx


def bin_centers(edges, top_age: int = 100) -> list[float]:
    """Representative age of each bin, used to turn bin probabilities into an age estimate."""
    centers = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] - 1 if i + 1 < len(edges) else max(top_age, lo)
        centers.append((lo + hi) / 2.0)
    return centers


def age_band(age: float) -> str:
    for name, lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return name
    return AGE_BANDS[-1][0]
