"""Checkpoints as a folder of ``config.json`` + ``model.safetensors``, local or on the Hub.

Nothing here unpickles: weights are safetensors, everything else is JSON. ``config.json``
holds the model type, the checkpoint format version, the library version, the model config
and the SHA-256 of the weights file, so that a truncated or tampered file is caught before
any tensor reaches a model. Every write goes to a temporary file first and is moved into
place with `os.replace`, so that an interrupted save never leaves a half-written file; the
file gets the mode a plain ``open()`` would give it (``0o666 & ~umask``), so that colleagues
in a group-shared folder can read it. Weights holding NaN or Inf are refused at load.

Training state (optimizer, step, RNG) is saved apart from the weights by `save_state`, as a
safetensors file for its tensors plus a JSON file for its structure, its scalars and the
SHA-256 of the tensor file (checked on load, like the weights).

`folder_lock` excludes concurrent writers of one folder (a lock file naming its holder), and
`remove_stale_temporaries` clears what an interrupted atomic write left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tumoraug.config import Config
from tumoraug.errors import CheckpointError, ConfigError, DataError, TumorAugError
from tumoraug.version import __version__

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_FORMAT = "tumoraug-training-state"
LOCK_NAME = ".tumoraug.lock"
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")

M = TypeVar("M", bound="PretrainedMixin")


def _create_temporary(path: Path) -> Path:
    """Create an empty ``.<name>.<8 hex>.tmp`` beside ``path`` with mode ``0o666 & ~umask``.

    ``os.open`` with mode 0o666 lets the kernel apply the umask (and default ACLs) exactly as
    for a plain ``open()``; ``tempfile.mkstemp`` would force 0o600 on every file we write.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries that interrupted atomic writes left in ``directory``.

    Only call it while holding the folder's `folder_lock`: a temporary of a live writer
    would be deleted too. Returns the removed paths.
    """
    removed = []
    for path in sorted(Path(directory).iterdir()):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_running(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_stale(holder: dict[str, Any]) -> bool:
    """A lock is stale when it names a process of this host that no longer runs."""
    pid = holder.get("pid")
    return (
        holder.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and not _pid_running(pid)
    )


def _acquire(path: Path, mine: dict[str, Any], error: type[TumorAugError]) -> None:
    for _ in range(2):  # a second try only after removing a stale lock
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            if not _is_stale(_read_lock(path)):
                break
            path.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise error(f"{path}: cannot create the lock file ({exc.strerror})") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        return
    holder = _read_lock(path)
    who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
    raise error(
        f"{path}: another tumoraug run ({who if holder else 'unknown holder'}) is writing to "
        f"{path.parent}; wait for it to end, or delete {path.name} if it no longer runs"
    )


@contextlib.contextmanager
def folder_lock(
    directory: str | Path, error: type[TumorAugError] = TumorAugError
) -> Iterator[Path]:
    """Hold ``directory/.tumoraug.lock`` for the block: one tumoraug writer per folder.

    The lock file records the pid, host and start time of its holder. A lock left by a
    process that is gone (same host, pid not running, e.g. after ``kill -9``) is stale and
    taken over; a live one, or one from another host, raises ``error`` naming its holder and
    the lock file. The lock is removed when the block ends, however it ends.
    """
    path = Path(directory) / LOCK_NAME
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _acquire(path, mine, error)
    try:
        yield path
    finally:
        if _read_lock(path) == mine:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The file ends with the mode a plain ``open()`` gives a new file (``0o666 & ~umask``),
    whatever the writer inside the block did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(path)
    mode = stat.S_IMODE(tmp_path.stat().st_mode)  # what a plain open() gives a new file here
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # some writers (safetensors) replace the file, mode 0o600
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as pretty, strict JSON to ``path`` atomically.

    A NaN or infinity would come out as the bare ``NaN`` / ``Infinity`` that JSON does not
    allow (other tools could not read the file): it is refused with a `DataError` naming the
    file, and nothing is written.
    """
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError as exc:
        raise DataError(f"{path}: refusing to write JSON holding NaN or Infinity ({exc})") from None
    atomic_write_text(path, text + "\n")


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save a flat dict of tensors as safetensors, atomically (tensors made contiguous on CPU)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_pretrained(
    path_or_repo_id: str | Path, *, revision: str | None = None, subfolder: str | None = None
) -> Path:
    """Return a local folder for a checkpoint: the folder itself, or a Hub snapshot.

    Hub ids go through ``huggingface_hub.snapshot_download`` (which honours
    ``HF_HUB_OFFLINE=1`` and the local cache); every failure becomes a `CheckpointError`.
    """
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        root = local
    elif isinstance(path_or_repo_id, str) and _looks_like_repo_id(path_or_repo_id):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            root = Path(snapshot_download(path_or_repo_id, revision=revision))
        except LocalEntryNotFoundError as exc:
            raise CheckpointError(
                f"{path_or_repo_id}: not a local folder and not in the local Hub cache "
                f"(offline mode or no network): {exc}"
            ) from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path_or_repo_id}: cannot download from the Hub: {exc}"
            ) from None
    else:
        raise CheckpointError(
            f"{path_or_repo_id}: no such checkpoint folder (and not a Hub id 'owner/name')"
        )
    if subfolder:
        root = root / subfolder
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint subfolder {subfolder!r} is missing")
    return root


def read_checkpoint_config(directory: str | Path, model_type: str | None = None) -> dict[str, Any]:
    """Read and check ``config.json``: present, JSON, right model type, known format version."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing checkpoint config file")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "config" not in meta or "format_version" not in meta:
        raise CheckpointError(
            f"{path}: not a tumoraug checkpoint config (no 'config'/'format_version')"
        )
    version = meta["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this tumoraug "
            f"({__version__}) supports ({FORMAT_VERSION}); upgrade tumoraug"
        )
    if model_type is not None and meta.get("model_type") != model_type:
        raise CheckpointError(
            f"{path}: holds a {meta.get('model_type')!r} model, expected {model_type!r}"
        )
    return meta


def load_weights(directory: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` after checking its hash, refusing NaN/Inf; errors name the file.

    A matching hash only proves the file is the one that was saved: weights that diverged
    in training would still turn every output into NaN, so they are refused here too.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(
            f"{path}: SHA-256 does not match the one recorded in {CONFIG_NAME}; "
            "the file is truncated, tampered with or from another checkpoint"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: tensor {bad[0]!r} holds NaN or Inf values ({len(bad)} of {len(state)} "
            "tensors are not finite); the weights are unusable, use an earlier checkpoint"
        )
    return state


def load_state_dict_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``model`` requiring exactly the same keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an `nn.Module` built as ``cls(config)``.

    Subclasses set ``config_class`` (a `Config` dataclass) and ``model_type`` (a short
    string recorded in ``config.json`` and checked on load) and keep their config in
    ``self.config``.
    """

    config_class: ClassVar[type[Config]]
    model_type: ClassVar[str]
    config: Config

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        assert isinstance(self, torch.nn.Module)
        weights = directory / WEIGHTS_NAME
        atomic_save_tensors(self.state_dict(), weights, metadata={"format": "pt"})
        atomic_write_json(
            directory / CONFIG_NAME,
            {
                "model_type": self.model_type,
                "format_version": FORMAT_VERSION,
                "tumoraug_version": __version__,
                "weights_sha256": sha256_file(weights),
                "config": self.config.to_dict(),
            },
        )
        return directory

    @classmethod
    def load_config(
        cls,
        path_or_repo_id: str | Path,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
    ) -> Config:
        """Read only the config of a checkpoint (no weights are touched)."""
        directory = resolve_pretrained(path_or_repo_id, revision=revision, subfolder=subfolder)
        meta = read_checkpoint_config(directory, cls.model_type)
        try:
            return cls.config_class.from_dict(meta["config"])
        except ConfigError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from None

    @classmethod
    def from_pretrained(
        cls: type[M],
        path_or_repo_id: str | Path,
        *,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        subfolder: str | None = None,
    ) -> M:
        """Load a model from a local folder or a Hub repo id; never unpickles anything."""
        directory = resolve_pretrained(path_or_repo_id, revision=revision, subfolder=subfolder)
        meta = read_checkpoint_config(directory, cls.model_type)
        try:
            config = cls.config_class.from_dict(meta["config"])
        except ConfigError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from None
        state = load_weights(directory, meta.get("weights_sha256"))
        model = cls(config)  # type: ignore[call-arg]
        assert isinstance(model, torch.nn.Module)
        load_state_dict_strict(model, state, str(directory / WEIGHTS_NAME))
        return model.to(device).eval()  # type: ignore[return-value]


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, str | int) for k in obj):
            raise TypeError(f"state key types not supported at {prefix!r}")
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        items = [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: dict[str, Any], directory: str | Path, name: str = "training_state") -> None:
    """Save a nested state (dicts, lists, tuples, scalars, tensors) without pickle.

    Tensors go to ``<name>.safetensors``; the structure and the SHA-256 of that file go to
    ``<name>.json``, written last, so that a JSON file always refers to a complete tensor
    file and `load_state` can tell when the tensors were altered.
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors, "state")
    tensor_path = directory / f"{name}.safetensors"
    atomic_save_tensors(tensors, tensor_path)
    atomic_write_json(
        directory / f"{name}.json",
        {
            "format": STATE_FORMAT,
            "tumoraug_version": __version__,
            "tensors_sha256": sha256_file(tensor_path),
            "state": structure,
        },
    )


def load_state(directory: str | Path, name: str = "training_state") -> dict[str, Any]:
    """Load a state written by `save_state`, checking the tensors' SHA-256; errors name the file."""
    directory = Path(directory)
    json_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing training-state file")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path}: corrupt training state ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{json_path}: not a training state of this tumoraug (no SHA-256 of "
            f"{tensor_path.name}; written by an older version?): start the run afresh "
            "(--no-resume, resume=False)"
        )
    if sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path}: SHA-256 does not match the one recorded in {json_path.name}; "
            "the training state is truncated, altered or from another checkpoint; delete "
            f"{directory.name} to resume from an earlier checkpoint, or start afresh (--no-resume)"
        )
    try:
        return _unflatten(meta["state"], load_file(str(tensor_path)))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}: corrupt training state ({exc})") from None


def rng_state() -> dict[str, Any]:
    """Capture the torch (CPU and CUDA) RNG states, for exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by `rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
