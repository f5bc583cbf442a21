import dataclasses
import json
import os
import socket
import subprocess
import sys
from typing import Any, ClassVar

import pytest
import torch

from tumoraug.checkpoint import (
    CONFIG_NAME,
    LOCK_NAME,
    WEIGHTS_NAME,
    PretrainedMixin,
    atomic_path,
    folder_lock,
    load_state,
    remove_stale_temporaries,
    resolve_pretrained,
    save_state,
)
from tumoraug.config import Config, check
from tumoraug.errors import CheckpointError, ConfigError, DataError


@dataclasses.dataclass
class ToyConfig(Config):
    width: int = 4
    dims: tuple[int, ...] = (2, 3)

    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"width": 2}}

    def validate(self) -> None:
        check(self.width > 0, "ToyConfig", "width", "a positive int", self.width)


class Toy(PretrainedMixin, torch.nn.Module):
    config_class = ToyConfig
    model_type = "toy"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = torch.nn.Linear(config.width, 3)

    def forward(self, x):
        return self.linear(x)


def test_config_round_trip_and_errors(tmp_path):
    config = ToyConfig.preset("tiny", dims=[4, 5])
    assert config.dims == (4, 5)
    config.to_json(tmp_path / "c.json")
    assert ToyConfig.from_json(tmp_path / "c.json") == config
    with pytest.raises(ConfigError, match=r"unknown field.*colour"):
        ToyConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match=r"ToyConfig\.width"):
        ToyConfig(width=0)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ToyConfig.preset("huge")


def test_save_load_round_trip(tmp_path):
    model = Toy(ToyConfig(width=4))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = Toy.from_pretrained(tmp_path / "ckpt")
    x = torch.randn(2, 4)
    assert torch.equal(model(x), loaded(x))
    meta = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert meta["model_type"] == "toy" and meta["format_version"] == 1


@pytest.mark.parametrize(
    "damage", ["missing_weights", "missing_config", "tampered", "newer", "shape", "wrong_type"]
)
def test_bad_checkpoints_raise_checkpoint_error(tmp_path, damage):
    directory = Toy(ToyConfig(width=4)).save_pretrained(tmp_path / "ckpt")
    meta = json.loads((directory / CONFIG_NAME).read_text())
    if damage == "missing_weights":
        (directory / WEIGHTS_NAME).unlink()
    elif damage == "missing_config":
        (directory / CONFIG_NAME).unlink()
    elif damage == "tampered":
        data = bytearray((directory / WEIGHTS_NAME).read_bytes())
        data[-1] ^= 0xFF
        (directory / WEIGHTS_NAME).write_bytes(bytes(data))
    elif damage == "newer":
        meta["format_version"] = 99
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    elif damage == "shape":
        Toy(ToyConfig(width=5)).save_pretrained(tmp_path / "other")
        (directory / WEIGHTS_NAME).write_bytes((tmp_path / "other" / WEIGHTS_NAME).read_bytes())
        meta["weights_sha256"] = json.loads((tmp_path / "other" / CONFIG_NAME).read_text())[
            "weights_sha256"
        ]
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    elif damage == "wrong_type":
        meta["model_type"] = "other"
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        Toy.from_pretrained(directory)


def test_missing_hub_repo_offline_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="someone/missing"):
        resolve_pretrained("someone/missing")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_pretrained(str(tmp_path / "nope"))


def test_training_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "rng": torch.get_rng_state(),
        "t": (1, 2.5),
    }
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert loaded["step"] == 7 and loaded["t"] == (1, 2.5)
    assert torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_folder_lock_excludes_a_second_writer_and_is_released(tmp_path):
    with folder_lock(tmp_path) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        second = pytest.raises(DataError, match=rf"another tumoraug run \(pid {os.getpid()} on ")
        with second, folder_lock(tmp_path, DataError):
            pass
        assert lock.exists()  # the refused second writer left the first one's lock alone
    assert not lock.exists()
    with pytest.raises(RuntimeError), folder_lock(tmp_path):
        raise RuntimeError("the block failed")
    assert not (tmp_path / LOCK_NAME).exists()


def test_folder_lock_takes_over_the_lock_of_a_dead_process(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with folder_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_remove_stale_temporaries_removes_only_atomic_write_leftovers(tmp_path):
    with atomic_path(tmp_path / "kept.json") as tmp:
        tmp.write_text("{}")
        leftover = tmp.name
    (tmp_path / leftover).write_text("half")  # what a kill -9 inside the block leaves
    for name in (".notes", "a.tmp", ".x.tmp", "data.json"):
        (tmp_path / name).write_text("user data")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".notes", ".x.tmp", "a.tmp", "data.json", "kept.json"
    ]  # fmt: skip
