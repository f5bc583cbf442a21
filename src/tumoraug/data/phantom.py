"""Procedural brain + tumor phantoms written in the BraTS 2019 or 2020 training layout.

A phantom is a head (scalp, skull, CSF, folded grey matter over white matter, lateral
ventricles, interhemispheric fissure) with one glioma: a core (necrosis and an enhancing rim,
or a non-enhancing mass) inside a rim of edema, in four modalities (t1, t1ce, t2, flair) plus a
BraTS segmentation (1 necrotic / non-enhancing core, 2 edema, 4 enhancing).

The grade is learnable but not trivial: every phantom draws a latent "aggressiveness" from a
normal distribution whose mean depends on the grade, and tumor size, edema extent, shape
irregularity, heterogeneity and composition all follow it plus their own noise. HGG phantoms
therefore tend to be larger, irregular, necrotic with an enhancing rim and wide edema; LGG
phantoms tend to be smaller, homogeneous and well bounded; the two distributions overlap.

Everything is vectorised numpy/scipy on the full grid and depends only on ``(seed, grade,
index)``: the same seed gives the same bytes on disk (gzip without timestamp or file name).
Sizes are in millimetres at 1 mm voxels and scale with the grid, so that a 48×48×32 test
phantom looks like a shrunken 240×240×155 one.

``layout="brats2020"`` writes the same subjects as the BraTS 2020 release ships them, quirks
included, so that its reader is tested without the real data: flat ``BraTS20_Training_NNN``
folders of uncompressed ``.nii`` files, ``name_mapping.csv`` (CRLF line ends, ``NA`` in the
older-release id columns) beside ``survival_info.csv``, and the last subject's segmentation
misnamed ``W39_1998.09.19_Segm.nii`` as in the release.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from tumoraug.checkpoint import atomic_path
from tumoraug.data.brats import MODALITIES
from tumoraug.errors import ConfigError
from tumoraug.labels import GRADES, to_grade, to_label

DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
"""The BraTS grid (1 mm isotropic)."""

LAYOUTS: tuple[str, ...] = ("brats2019", "brats2020")
"""The folder layouts `write_phantom_dataset` can write."""

MISNAMED_SEG = "W39_1998.09.19_Segm.nii"
"""The segmentation name that BraTS 2020 ships for one subject instead of ``<id>_seg.nii``."""

NAME_MAPPING_COLUMNS: tuple[str, ...] = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
"""The header of BraTS 2020's ``name_mapping.csv``."""

MIN_SIZE = 16
"""The smallest phantom edge length that still holds a recognisable head and tumor."""

GRADE_SHIFT = 0.78
"""Mean of the latent aggressiveness: +GRADE_SHIFT for HGG, -GRADE_SHIFT for LGG (unit sd)."""

# Mean intensity of each tissue per modality (t1, t1ce, t2, flair), on a 0..1 scale.
_TISSUE = {
    "scalp": (0.80, 0.84, 0.55, 0.50),
    "skull": (0.08, 0.08, 0.06, 0.06),
    "csf": (0.18, 0.20, 1.00, 0.10),
    "grey": (0.50, 0.52, 0.62, 0.58),
    "white": (0.72, 0.74, 0.40, 0.45),
    "edema": (0.46, 0.48, 0.84, 0.86),
    "core": (0.38, 0.40, 0.88, 0.80),
    "enhancing": (0.50, 1.05, 0.66, 0.70),
    "necrosis": (0.22, 0.24, 0.96, 0.42),
}
_SCALE = 1000.0  # stored intensities are int16 in 1..~1100, background exactly 0


@dataclass
class Phantom:
    """One generated subject: modality volumes (int16), segmentation (uint8), tumor parameters."""

    images: dict[str, np.ndarray]
    seg: np.ndarray
    params: dict[str, float | bool | str] = field(default_factory=dict)


def phantom_id(grade: str, index: int) -> str:
    """Subject id of phantom number ``index`` of ``grade`` (e.g. ``Phantom_HGG_003``)."""
    return f"Phantom_{to_grade(grade)}_{index:03d}"


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIZE:
        raise ConfigError(f"phantom shape must be 3 sizes >= {MIN_SIZE} (D H W), got {shape}")
    return shape  # type: ignore[return-value]


def _smooth_weights(n_out: int, spacing: float) -> np.ndarray:
    """Gaussian interpolation weights from a coarse grid (step ``spacing``) to ``n_out`` voxels."""
    n_in = int(np.ceil(n_out / spacing)) + 4
    centres = (np.arange(n_in) - 2.0) * spacing
    pos = np.arange(n_out, dtype=np.float64)[:, None]
    weights = np.exp(-0.5 * ((pos - centres[None, :]) / spacing) ** 2)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: float) -> np.ndarray:
    """A smooth Gaussian random field with unit variance and correlation length ``spacing``.

    White noise on a coarse grid is interpolated with Gaussian weights, one axis at a time
    (three small matrix products), which is far cheaper than filtering the full grid.
    """
    spacing = max(float(spacing), 1.0)
    mats = [_smooth_weights(n, spacing) for n in shape]
    coarse = rng.standard_normal([m.shape[1] for m in mats], dtype=np.float32)
    out = np.tensordot(coarse, mats[2], axes=([2], [1]))  # (a, b, W)
    out = np.tensordot(mats[1], out, axes=([1], [1]))  # (H, a, W)
    out = np.tensordot(mats[0], out, axes=([1], [1]))  # (D, H, W)
    return np.ascontiguousarray(out, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic soft step (float32): the partial-volume edge between two tissues.

    Works in place on ``x`` (always a temporary here) to spare the allocations.
    """
    x = np.asarray(x, dtype=np.float32)
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


def _grid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> list:
    """Open (broadcastable) normalised coordinates ``(x - c) / r`` along each axis."""
    return [
        ((np.arange(n, dtype=np.float32) - np.float32(c)) / np.float32(r)).reshape(
            [-1 if i == a else 1 for i in range(3)]
        )
        for a, (n, c, r) in enumerate(zip(shape, centre, radii, strict=True))
    ]


def _draw_tumor_params(rng: np.random.Generator, label: int) -> dict[str, float | bool]:
    """Tumor parameters of one subject: a latent aggressiveness plus per-feature noise."""
    a = rng.normal(GRADE_SHIFT if label == 1 else -GRADE_SHIFT, 1.0)
    hgg = label == 1
    core_mm = float(np.clip(15.0 * np.exp(0.20 * a + 0.22 * rng.normal()), 6.0, 28.0))
    ratio = float(np.clip(1.12 + 0.22 * np.exp(0.45 * a + 0.35 * rng.normal()), 1.08, 2.1))
    return {
        "aggressiveness": float(a),
        "core_mm": core_mm,
        "edema_mm": min(core_mm * ratio, 44.0),
        "irregularity": float(np.clip(0.16 + 0.06 * a + 0.05 * rng.normal(), 0.03, 0.4)),
        "heterogeneity": float(np.clip(0.06 + 0.025 * a + 0.02 * rng.normal(), 0.015, 0.15)),
        "rim": bool(rng.random() < (0.88 if hgg else 0.15)),
        "necrosis_fraction": float(np.clip(0.55 + 0.08 * a + 0.08 * rng.normal(), 0.2, 0.8)),
        "flair_edema": float(np.clip(0.86 + 0.05 * rng.normal(), 0.7, 1.0)),
        "flair_core": float(np.clip(0.80 + 0.06 * rng.normal(), 0.6, 1.0)),
    }


def make_phantom(
    grade: str | int,
    seed: int = 0,
    index: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
) -> Phantom:
    """Generate one phantom subject; the result depends only on ``(grade, seed, index, shape)``."""
    label = to_label(grade)
    shape = _check_shape(shape)
    rng = np.random.default_rng([int(seed), label, int(index)])
    params = _draw_tumor_params(rng, label)
    scale = min(shape[0] / 240.0, shape[1] / 240.0, shape[2] / 155.0)
    sizes = np.asarray(shape, dtype=np.float32)

    # Head: an ellipsoid with a gently wobbling surface; layers by normalised distance.
    centre = sizes * np.array([0.5, 0.52, 0.48]) + rng.normal(0, 0.01, 3) * sizes
    radii = sizes * np.array([0.36, 0.42, 0.44]) * rng.uniform(0.95, 1.03, 3)
    gx, gy, gz = _grid(shape, centre, radii)
    dist = np.sqrt(gx * gx + gy * gy + gz * gz)
    dist *= 1.0 + 0.02 * smooth_field(rng, shape, 40 * scale + 2)
    edge = 0.7 / float(radii.mean())  # partial-volume width: about 0.7 voxel

    def inside(threshold: float | np.ndarray, d: np.ndarray = dist) -> np.ndarray:
        return _sigmoid((threshold - d) / edge)

    head, skull_in, csf_in, brain = inside(1.0), inside(0.95), inside(0.90), inside(0.87)
    # Gyri: the grey/white boundary follows a mid-frequency field; sulci are CSF in the cortex.
    fold = smooth_field(rng, shape, 5 * scale + 1.5)
    white = inside(0.87 * (0.85 + 0.05 * fold))
    sulci = _sigmoid((fold - 0.9) / 0.15) * (brain - white).clip(0, 1)
    ventricles = _ventricles(shape, centre, radii, edge)
    fissure = _fissure(shape, centre, gy, gz, scale)
    csf_brain = np.clip(ventricles + sulci + fissure * (1.0 - white), 0.0, 1.0)
    fractions = {
        "scalp": head - skull_in,
        "skull": skull_in - csf_in,
        "csf": (csf_in - brain) + brain * csf_brain,
        "grey": brain * (1.0 - csf_brain) * (1.0 - white),
        "white": brain * (1.0 - csf_brain) * white,
    }
    del dist, gx, gy, gz, skull_in, csf_in, sulci, fold, fissure

    tumor = _tumor(rng, shape, centre, radii, brain * (1.0 - ventricles), params, scale)
    del ventricles
    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    texture *= 1.0 / max(float(texture.std()), 1e-6)

    # All four modalities at once: (4, 5) tissue intensities times (5, N) tissue fractions.
    names = list(fractions)
    values = np.array([_TISSUE[n] for n in names], dtype=np.float32).T
    tissues = np.tensordot(values, np.stack([fractions.pop(n) for n in names]), axes=1)
    texture_gain = texture * np.float32(0.035)
    texture_gain += 1.0
    tissues *= texture_gain
    del texture_gain
    outside = head <= 0.5
    noise = np.empty(shape, dtype=np.float32)
    images = {}
    for m, modality in enumerate(MODALITIES):
        vol = _add_tumor(tissues[m], tumor, params, m, texture)
        bias = smooth_field(rng, shape, 60 * scale + 4)
        bias *= 0.05
        bias += 1.0
        vol *= bias  # a smooth intensity non-uniformity
        rng.standard_normal(dtype=np.float32, out=noise)
        noise *= 0.012
        vol += noise
        vol *= _SCALE
        np.clip(vol, 1.0, 32000.0, out=vol)
        vol[outside] = 0.0
        images[modality] = np.rint(vol, out=vol).astype(np.int16)
    params["grade"] = GRADES[label]
    return Phantom(images=images, seg=tumor["seg"], params=params)


def _ventricles(shape, centre, radii, edge) -> np.ndarray:
    """Two lateral ventricles (curved ellipsoids beside the midline) as a soft mask."""
    out = np.zeros(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        c = np.asarray(centre) + np.array([side * 0.11, 0.02, 0.10]) * radii
        r = np.array([0.07, 0.36, 0.12]) * radii
        # only a box around the ventricle: beyond it the soft mask is 0 to float precision
        lo = np.maximum(np.floor(c - r * np.array([2.0, 2.0, 3.5])), 0).astype(int)
        hi = np.minimum(np.ceil(c + r * 2.0) + 1, shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        vx, vy, vz = _grid(hi - lo, c - lo, r)
        # bend the ventricle downwards at its ends, like the real horns
        d = np.sqrt(vx * vx + vy * vy + (vz + 0.9 * vy * vy) ** 2)
        np.maximum(out[box], _sigmoid((1.0 - d) / (edge * 6.0)), out=out[box])
    return out


def _fissure(shape, centre, gy, gz, scale) -> np.ndarray:
    """Interhemispheric fissure: a thin CSF sheet on the midline above the corpus callosum."""
    half_width = max(0.8, 1.2 * scale)
    x = np.arange(shape[0], dtype=np.float32).reshape(-1, 1, 1) - centre[0]
    sheet = _sigmoid((half_width - np.abs(x)) / 0.5)
    above = _sigmoid((gz - 0.25 + 0.3 * gy * gy) / 0.05) + _sigmoid((np.abs(gy) - 0.65) / 0.05)
    return (sheet * np.clip(above, 0.0, 1.0)).astype(np.float32)


def _tumor(rng, shape, centre, radii, tissue_ok, params, scale) -> dict:
    """Place the tumor in a hemisphere; soft masks inside a bounding box, BraTS labels."""
    core_r = params["core_mm"] * scale
    edema_r = params["edema_mm"] * scale
    # Tumor centre: inside one hemisphere, away from the midline and the brain surface.
    side = rng.choice([-1.0, 1.0])
    offset = 0.87 * np.array(
        [side * rng.uniform(0.25, 0.45), rng.uniform(-0.4, 0.4), rng.uniform(-0.15, 0.35)]
    )
    t_centre = np.asarray(centre) + offset * radii
    # Everything below lives in a box around the tumor: the rest of the head is untouched.
    reach = edema_r * 2.2 + 3.0
    lo = [max(0, int(np.floor(c - reach))) for c in t_centre]
    hi = [min(n, int(np.ceil(c + reach)) + 1) for c, n in zip(t_centre, shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    box_shape = [b - a for a, b in zip(lo, hi, strict=True)]
    tx, ty, tz = _grid(box_shape, t_centre - np.asarray(lo), np.ones(3))
    dist = np.sqrt(tx * tx + ty * ty + tz * tz)  # voxels from the tumor centre
    lobes = smooth_field(rng, box_shape, max(core_r * 0.7, 1.5))
    fingers = smooth_field(rng, box_shape, max(core_r * 0.45, 1.2))
    irr = params["irregularity"]
    r_core = dist / (core_r * np.maximum(1.0 + irr * lobes, 0.3))
    spread = (1.6 * irr + 0.08) * (0.6 * lobes + 0.8 * fingers)
    r_edema = dist / (edema_r * np.clip(1.0 + spread, 0.3, 1.4))
    e = max(0.08, 0.7 / max(core_r, 1.0))
    ok = tissue_ok[box]
    core = _sigmoid((1.0 - r_core) / e) * ok
    edema = np.maximum(_sigmoid((1.0 - r_edema) / e) * ok, core)
    if params["rim"]:  # necrotic centre inside an enhancing rim
        necrosis = _sigmoid((params["necrosis_fraction"] - r_core) / e) * core
    else:  # a homogeneous non-enhancing mass
        necrosis = np.zeros(box_shape, dtype=np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    local = seg[box]
    local[edema > 0.5] = 2
    local[core > 0.5] = 4 if params["rim"] else 1
    local[necrosis > 0.5] = 1
    return {"box": box, "edema": edema, "core": core, "necrosis": necrosis, "seg": seg}


def _add_tumor(tissue, tumor, params, m, texture) -> np.ndarray:
    """Blend the tumor's compartments into one modality (index ``m``) of the healthy tissue."""
    flair = m == MODALITIES.index("flair")
    edema_value = params["flair_edema"] if flair else _TISSUE["edema"][m]
    core_name = "enhancing" if params["rim"] else "core"
    core_value = params["flair_core"] if flair and not params["rim"] else _TISSUE[core_name][m]
    box = tumor["box"]
    local = tissue[box]
    hetero = 1.0 + params["heterogeneity"] * texture[box][::-1]
    inner = core_value + tumor["necrosis"] * (_TISSUE["necrosis"][m] - core_value)
    lesion = edema_value + tumor["core"] * (inner * hetero - edema_value)
    tissue[box] = local + tumor["edema"] * (lesion - local)
    return tissue


def save_nifti(volume: np.ndarray, path: str | Path, affine: np.ndarray | None = None) -> None:
    """Write ``volume`` as NIfTI (gzip when the name ends in ``.gz``), byte-reproducibly.

    The gzip stream is written without a timestamp or file name, so that the same array gives
    the same bytes whenever and wherever it is written; the write is atomic.
    """
    path = Path(path)
    image = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    image.header.set_xyzt_units("mm", "sec")
    data = image.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


Task = tuple[Path, dict[str, str], str, int, int, tuple[int, int, int]]
"""What `_write_one` writes: (folder, file name per kind, grade, seed, index, shape)."""


def _write_one(task: Task) -> None:
    folder, names, grade, seed, index, shape = task
    phantom = make_phantom(grade, seed=seed, index=index, shape=shape)
    folder.mkdir(parents=True, exist_ok=True)
    for modality, volume in phantom.images.items():
        save_nifti(volume, folder / names[modality])
    save_nifti(phantom.seg, folder / names["seg"])


def _tasks(
    out_dir: Path, per_class: int, seed: int, shape: tuple[int, int, int], layout: str
) -> list[Task]:
    """One `_write_one` task per subject of ``layout``, HGG subjects first."""
    subjects = [(g, i) for g in ("HGG", "LGG") for i in range(per_class)]
    if layout == "brats2019":
        ids = [phantom_id(g, i) for g, i in subjects]
        folders = [out_dir / g / s for s, (g, _) in zip(ids, subjects, strict=True)]
    else:
        ids = [f"BraTS20_Training_{n:03d}" for n in range(1, len(subjects) + 1)]
        folders = [out_dir / s for s in ids]
    ext = ".nii.gz" if layout == "brats2019" else ".nii"
    tasks = [
        (folder, {k: f"{s}_{k}{ext}" for k in (*MODALITIES, "seg")}, g, seed, i, shape)
        for s, folder, (g, i) in zip(ids, folders, subjects, strict=True)
    ]
    if layout == "brats2020":
        tasks[-1][1]["seg"] = MISNAMED_SEG
    return tasks


def _brats2020_tables(tasks: list[Task], out_dir: Path) -> None:
    """Write ``name_mapping.csv`` and ``survival_info.csv`` as the BraTS 2020 release has them.

    Every other subject has ids of the older releases, the rest ``NA`` there (so ``NA``
    repeats in those columns); the TCGA column is ``NA`` throughout. Lines end in CRLF.
    """
    rows = [",".join(NAME_MAPPING_COLUMNS)]
    survival = ["Brats20ID,Age,Survival_days,Extent_of_Resection"]
    for folder, _, grade, _, index, _ in tasks:
        old = phantom_id(grade, index)
        older = [f"Brats17_{old}", f"Brats18_{old}", "NA", f"BraTS19_{old}"]
        rows.append(",".join([grade, *(older if index % 2 == 0 else ["NA"] * 4), folder.name]))
        if grade == "HGG":
            survival.append(f"{folder.name},{50 + index}.0,{300 + 7 * index},GTR")
    for name, lines in (("name_mapping.csv", rows), ("survival_info.csv", survival)):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes("".join(line + "\r\n" for line in lines).encode())


def write_phantom_dataset(
    out_dir: str | Path,
    per_class: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    workers: int = 1,
    layout: str = "brats2019",
) -> Path:
    """Write ``per_class`` HGG and LGG phantoms in a BraTS layout under ``out_dir``.

    ``"brats2019"``: ``<out_dir>/{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``;
    ``"brats2020"``: the release's layout (see the module docs), HGG subjects first. Identity
    (1 mm) affine. Subject ``i`` of a grade is the same whatever the layout, ``per_class`` or
    ``workers``.
    """
    if int(per_class) < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    shape = _check_shape(shape)
    out_dir = Path(out_dir)
    tasks = _tasks(out_dir, int(per_class), int(seed), shape, layout)
    if layout == "brats2020":
        _brats2020_tables(tasks, out_dir)
    if workers == 1:
        for task in tasks:
            _write_one(task)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks), os.cpu_count() or 1)) as ex:
            list(ex.map(_write_one, tasks))
    return out_dir
