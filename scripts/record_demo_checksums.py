"""Record the SHA-256 of the embedded demo model's output for `tests/test_pretrained.py`.

Run once when a new demo model is shipped (CPU, one thread, default `SamplingConfig`):

    OMP_NUM_THREADS=1 python scripts/record_demo_checksums.py

For each grade it stores the token grids (int64) and the volumes (float32) of seeds 0-3 and
of the seeds that ``tumoraug generate --seed 0 --n 4`` uses, so that any later change that
alters what the shipped model generates fails a test instead of passing silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tumoraug import TumorGenerator
from tumoraug.pretrained import demo_model_path, sample_checksums
from tumoraug.sampling import per_sample_seeds

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "demo_samples_sha256.json"


def main() -> None:
    torch.set_num_threads(1)
    generator = TumorGenerator.from_pretrained(demo_model_path(), device="cpu")
    samples = {}
    for grade in ("HGG", "LGG"):
        for case, seeds in (("seeds0123", [0, 1, 2, 3]), ("cli_seed0_n4", per_sample_seeds(0, 4))):
            samples[f"{grade}/{case}"] = sample_checksums(generator, grade, seeds)
    about = (
        "SHA-256 of the embedded demo model's output, recorded by "
        "scripts/record_demo_checksums.py when the model was shipped: default SamplingConfig, "
        "CPU, one thread; token grids as int64, volumes as float32."
    )
    REFERENCE.write_text(json.dumps({"about": about, "samples": samples}, indent=1) + "\n")
    print(f"wrote {len(samples)} cases to {REFERENCE}")


if __name__ == "__main__":
    main()
