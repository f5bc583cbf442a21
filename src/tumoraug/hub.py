"""Publishing a model folder on the Hugging Face Hub, with a model card made from its metadata.

`push_to_hub` checks a `TumorGenerator` folder first (it must load, weights included; a
pickle anywhere in it is refused), plans the upload, writes or refreshes ``README.md`` (the
model card, with the Hub's YAML front matter) and uploads the plan in one commit;
``dry_run`` returns the plan without writing or uploading anything. `model_card` is the
card's text, `folder_card` fills it from a folder's configs, training record and results.

A push uploads the model format (``tumoraug.json``; ``tokenizer/`` and ``transformer/``,
each ``config.json`` + ``model.safetensors``), the card, and the Markdown, JSON and PNG files
at the top of the folder (``results.md``, ``samples.json``, ``train_summary.json``,
previews). It leaves out ``checkpoints/`` (optimizer and RNG state: for resuming, not for
using the model), ``metrics.jsonl`` (the training log: the card shows its last line),
``samples/`` (training-time montages), top-level ``*.safetensors`` (the token corpora of
the training data: not needed to load the model, and the data may not be redistributable)
and anything else outside the format. A hand-written ``README.md`` (one without the
generated card's title) is kept; only missing front-matter fields are added to it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumoraug.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_text
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.generator import MANIFEST_NAME, TOKENIZER_DIR, TRANSFORMER_DIR, TumorGenerator
from tumoraug.labels import GRADES

__all__ = [
    "CARD_NAME",
    "UploadPlan",
    "check_repo_id",
    "folder_card",
    "model_card",
    "plan_upload",
    "push_to_hub",
]

CARD_NAME = "README.md"
CARD_TITLE = "# tumoraug tumor generator"
"""The generated card's title: a README.md with this line is regenerated, others are kept."""
TAGS = ("medical-imaging", "3d", "brain-tumor", "mri", "data-augmentation", "synthetic-data")
STAGES = (TOKENIZER_DIR, TRANSFORMER_DIR)
MODEL_FILES = (MANIFEST_NAME, *(f"{s}/{n}" for s in STAGES for n in (CONFIG_NAME, WEIGHTS_NAME)))
EXTRA_SUFFIXES = (".md", ".json", ".png")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
LEFT_OUT = {
    "checkpoints": "training checkpoints (optimizer and RNG state): for resuming, not for use",
    "metrics.jsonl": "the training log; the card shows its last line",
    "samples": "training-time montages",
}


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a Hub model id ``OWNER/NAME``, else raise `ConfigError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("expected exactly one '/'")
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(
            f"repo id {repo_id!r}: expected OWNER/NAME (letters, digits, '-', '_' and '.'; "
            f"at most 96 characters): {exc}"
        ) from None
    return repo_id


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclasses.dataclass(frozen=True)
class UploadPlan:
    """What `push_to_hub` uploads, or would with ``dry_run``.

    ``files`` maps each path in the repo to its size in bytes (``README.md``: the card's);
    ``left_out`` maps what the folder holds beside them to why it stays local; ``card`` is
    the model card, ``card_changed`` whether it differs from the folder's ``README.md``.
    ``commit_url`` is set once uploaded.
    """

    model_dir: Path
    repo_id: str
    files: dict[str, int]
    left_out: dict[str, str]
    card: str
    card_changed: bool
    private: bool
    commit_message: str
    commit_url: str | None = None

    @property
    def total_bytes(self) -> int:
        """Bytes to upload."""
        return sum(self.files.values())

    def describe(self) -> str:
        """The plan for people: each file and its size, the total, what is left out and why."""
        visibility = "private" if self.private else "public"
        lines = [f"{self.model_dir} -> Hub repo {self.repo_id} ({visibility} if created)"]
        width = max(len(name) for name in self.files)
        card = "  model card" + (" (updated)" if self.card_changed else "")
        for name, size in self.files.items():
            note = card if name == CARD_NAME else ""
            lines.append(f"  {name:<{width}}  {_size(size):>8}{note}")
        lines.append(f"{len(self.files)} files, {_size(self.total_bytes)}")
        if self.left_out:
            lines.append("left out:")
            lines += [f"  {name}: {why}" for name, why in self.left_out.items()]
        return "\n".join(lines)


def model_card(
    roi_size: int,
    in_channels: int,
    *,
    repo_id: str | None = None,
    details: Sequence[tuple[str, str]] = (),
    sections: Sequence[tuple[str, str]] = (),
    license: str | None = None,
) -> str:
    """The README.md (Hub model card) of a `TumorGenerator` folder of ``roi_size``³ ROIs.

    ``details``: rows of the "Model" table; ``sections``: (title, Markdown) after it;
    ``repo_id`` goes into the usage snippet; ``license``: a Hub license id for the front matter.
    """
    from huggingface_hub import ModelCardData

    front = ModelCardData(library_name="tumoraug", license=license, tags=list(TAGS)).to_yaml()
    target = repo_id or "<this repo or folder>"
    parts = [
        f"---\n{front}\n---\n\n{CARD_TITLE}\n\nClass-conditional (LGG / HGG) synthetic "
        f"{roi_size}³ brain-tumor ROIs with {in_channels} channel(s): a 3D VQGAN tokenizer and a "
        "masked transformer.\n\n```python\nfrom tumoraug import TumorGenerator\n\n"
        f'generator = TumorGenerator.from_pretrained("{target}")\n'
        'rois = generator.generate("HGG", n=4, seed=0)  # (4, C, S, S, S) in [-1, 1]\n```\n\n'
        f'```bash\ntumoraug generate --model "{target}" --label HGG,LGG --n 4 --out synthetic/\n'
        "```\n"
    ]
    if details:
        parts.append(
            "## Model\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in details)
        )
    parts += [f"## {title}\n\n{body.strip()}\n" for title, body in sections]
    parts.append(
        "## Intended use\n\nResearch on data augmentation for brain-tumor grading (LGG / HGG). "
        "Synthetic ROIs are not patients: do not use them, or models trained only on them, for "
        "clinical decisions.\n"
    )
    return "\n".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a `CheckpointError` naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _last_metrics(root: Path) -> dict[str, Any]:
    """The last line of the training log: from ``train_summary.json`` or ``metrics.jsonl``."""
    from tumoraug.training.checkpoints import METRICS_NAME

    if (root / "train_summary.json").is_file():
        final = _read_json(root / "train_summary.json").get("final")
        return final if isinstance(final, dict) else {}
    path = root / METRICS_NAME
    lines = (
        [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    try:
        last = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: last line is not JSON ({exc})") from None
    return last if isinstance(last, dict) else {}


def _training(root: Path, last: dict[str, Any]) -> str:
    """Stage 2's training in a sentence: steps, minutes, options and recipe (when recorded)."""
    from tumoraug.training.checkpoints import RUN_NAME, latest_checkpoint

    summary = root / "train_summary.json"
    minutes = _read_json(summary).get("train_minutes") if summary.is_file() else None
    checkpoint = latest_checkpoint(root)
    run = checkpoint / RUN_NAME if checkpoint else None
    record = _read_json(run) if run and run.is_file() else {}
    parts = [f"{last['step']} steps"] if "step" in last else []
    parts += [f"{minutes:g} min"] if isinstance(minutes, (int, float)) else []
    for key, label in (("train", "options"), ("recipe", "recipe")):
        if isinstance(record.get(key), dict) and record[key]:
            parts.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in record[key].items()))
    return "; ".join(parts)


def _results(root: Path, last: dict[str, Any]) -> list[tuple[str, str]]:
    """Card sections from the reports in the folder: samples, downstream results, training."""
    sections = []
    if (root / "samples.md").is_file():
        sections.append(("Sample quality (`samples.md`)", (root / "samples.md").read_text()))
    elif (root / "samples.json").is_file():
        from tumoraug.evaluation.samples import SampleReport

        data = _read_json(root / "samples.json")
        try:
            table = SampleReport(rows=data["rows"], settings=data["settings"]).to_markdown()
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{root / 'samples.json'}: not a sample report ({exc})") from None
        sections.append(("Sample quality (`samples.json`)", table))
    if (root / "results.md").is_file():
        title = "Downstream LGG / HGG classifier (`results.md`)"
        sections.append((title, (root / "results.md").read_text()))
    metrics = {k: v for k, v in last.items() if k not in ("step", "lr", "time_s")}
    if metrics:
        rows = "".join(f"| {k} | {v:g} |\n" if isinstance(v, float) else f"| {k} | {v} |\n"
                       for k, v in metrics.items())  # fmt: skip
        title = f"Training metrics (stage 2, step {last.get('step', '?')})"
        sections.append((title, "| Metric | Value |\n|---|---|\n" + rows))
    return sections


def _parameters(module: Any) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M parameters"


def folder_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    generator: TumorGenerator | None = None,
) -> str:
    """`model_card` filled from a model folder: configs, parameter counts, the training
    record (``train_summary.json``, ``metrics.jsonl``, the newest checkpoint's ``run.json``)
    and the results (``samples.md`` or ``samples.json``, ``results.md``) found in it."""
    root = Path(model_dir)
    generator = generator or TumorGenerator.from_pretrained(root, device="cpu")
    tok, tra = generator.tokenizer_config, generator.transformer_config
    manifest = _read_json(root / MANIFEST_NAME)
    grid = "×".join(str(n) for n in tra.token_grid)
    grades = " / ".join(manifest.get("grades", GRADES))
    size = sum((root / name).stat().st_size for name in MODEL_FILES)
    details = [
        ("Output", f"class-conditional ({grades}) {tok.roi_size}³ ROIs, {tok.in_channels} "
                   f"channel(s) ({', '.join(generator.modalities)}), in [-1, 1]"),
        ("Stage 1 (`tokenizer/`)", f"`VQGAN3D`: {grid} token grid, {tok.codebook_size} codes "
         f"of dimension {tok.embed_dim}, widths {tok.base_channels} × {tuple(tok.channel_mult)},"
         f" {_parameters(generator.tokenizer)}"),
        ("Stage 2 (`transformer/`)", f"`{type(generator.transformer).__name__}`: dim {tra.dim}, "
         f"{tra.depth} layers, {tra.heads} heads, {tra.pos_embedding} positions, "
         f"{tra.conditioning} conditioning, {_parameters(generator.transformer)}"),
    ]  # fmt: skip
    last = _last_metrics(root)
    training = _training(root, last)
    if training:
        details.append(("Stage 2 training", training))
    details.append(
        ("Files", f"format {manifest.get('format_version')}, tumoraug "
                  f"{manifest.get('tumoraug_version', '?')}, {_size(size)}")
    )  # fmt: skip
    return model_card(
        tok.roi_size, tok.in_channels, repo_id=repo_id, details=details,
        sections=_results(root, last), license=license,
    )  # fmt: skip


def _with_metadata(path: Path, license: str | None) -> str:
    """A hand-written card with the front-matter fields it lacks (unchanged if none)."""
    import yaml
    from huggingface_hub import ModelCard

    text = path.read_text()
    try:
        card = ModelCard(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(
            f"{path}: the card's YAML front matter does not parse ({exc})"
        ) from None
    before = card.data.to_dict()
    tags = list(card.data.tags or [])
    card.data.tags = tags + [t for t in TAGS if t not in tags]
    card.data.library_name = card.data.library_name or "tumoraug"
    card.data.license = license or card.data.license
    return text if card.data.to_dict() == before else str(card)


def _check_folder(root: Path) -> TumorGenerator:
    """The folder's generator, weights loaded; `CheckpointError` naming what is wrong."""
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such model folder")
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
            raise CheckpointError(
                f"{path}: a pickle ({path.suffix}) in the model folder; tumoraug folders hold "
                "safetensors and JSON only, and nothing is pushed from a folder holding pickles: "
                "move it out"
            )
    return TumorGenerator.from_pretrained(root, device="cpu").load()


def _left_out(root: Path, files: dict[str, int]) -> dict[str, str]:
    left: dict[str, str] = {}
    for path in sorted(root.iterdir()):
        name = path.name + "/" * path.is_dir()
        if path.name.startswith(".") or path.name in files:
            continue
        if path.name in STAGES:
            extra = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            for p in extra:
                if p.relative_to(root).as_posix() not in files:
                    left[p.relative_to(root).as_posix()] = "not part of the stage folder format"
        elif path.name in LEFT_OUT:
            left[name] = LEFT_OUT[path.name]
        elif path.suffix == ".safetensors":
            left[name] = "not part of the model (training token corpora stay local)"
        else:
            left[name] = "outside the model format (only Markdown, JSON and PNG files are added)"
    return left


def plan_upload(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
    license: str | None = None,
) -> UploadPlan:
    """Check ``repo_id`` and the folder (it must load), then plan the upload and the card."""
    check_repo_id(repo_id)
    root = Path(model_dir).expanduser()
    generator = _check_folder(root)
    card_path = root / CARD_NAME
    old = card_path.read_text() if card_path.is_file() else None
    if old is None or CARD_TITLE in old.splitlines():
        card = folder_card(root, repo_id=repo_id, license=license, generator=generator)
    else:
        card = _with_metadata(card_path, license)
    extras = sorted(
        p.name for p in root.iterdir()
        if p.is_file() and p.suffix in EXTRA_SUFFIXES and not p.name.startswith(".")
        and p.name not in (CARD_NAME, MANIFEST_NAME)
    )  # fmt: skip
    files = {CARD_NAME: len(card.encode())}
    files.update({name: (root / name).stat().st_size for name in (*MODEL_FILES, *extras)})
    message = commit_message or (
        f"Upload tumoraug model ({generator.roi_size}³ ROIs, {generator.in_channels} channel(s))"
    )
    return UploadPlan(
        model_dir=root, repo_id=repo_id, files=files, left_out=_left_out(root, files), card=card,
        card_changed=card != old, private=private, commit_message=message,
    )  # fmt: skip


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    dry_run: bool = False,
    api: Any = None,
) -> UploadPlan:
    """Upload a `TumorGenerator` folder to the Hub repo ``repo_id`` (``OWNER/NAME``).

    The folder is checked and planned by `plan_upload`; ``dry_run`` returns that plan and
    touches neither the folder nor the network. Otherwise ``README.md`` is written when the
    card changed, the repo is created if needed (``private`` applies then) and the planned
    files go up in one commit. ``token``: a Hub token (default: ``HF_TOKEN`` or the login of
    ``hf auth login``); ``api``: an `huggingface_hub.HfApi` or a stand-in with its
    ``create_repo`` and ``create_commit`` (then ``token`` is not used). Every failure is a
    `TumorAugError`: `ConfigError` for the repo id, `CheckpointError` for the rest.
    """
    plan = plan_upload(
        model_dir, repo_id, private=private, commit_message=commit_message, license=license
    )
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if api is None:
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{repo_id}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it "
                "(a dry run shows the plan offline)"
            )
        api = HfApi(token=token)
    if plan.card_changed:
        try:
            atomic_write_text(plan.model_dir / CARD_NAME, plan.card)
        except OSError as exc:
            raise CheckpointError(
                f"{plan.model_dir / CARD_NAME}: cannot write the model card ({exc})"
            ) from None
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.model_dir / name))
        for name in plan.files
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id, operations, commit_message=plan.commit_message, repo_type="model"
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{repo_id}: upload to the Hub failed ({exc}); log in with `hf auth login`, set "
            "HF_TOKEN or pass a token"
        ) from None
    return dataclasses.replace(plan, commit_url=str(info.commit_url))
