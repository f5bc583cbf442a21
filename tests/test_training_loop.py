import dataclasses
import itertools
import json
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from tumoraug.checkpoint import PretrainedMixin
from tumoraug.config import Config
from tumoraug.errors import ConfigError
from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import (
    StepOutput,
    TrainingTask,
    _BatchSampler,
    fit,
    latest_checkpoint,
)


@dataclasses.dataclass
class NetConfig(Config):
    width: int = 4
    dropout: float = 0.0
    presets: ClassVar[dict[str, dict[str, Any]]] = {}


class Net(PretrainedMixin, nn.Module):
    config_class = NetConfig
    model_type = "toy_net"

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Linear(3, config.width)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(torch.tanh(self.body(x)))


class ToyTask(TrainingTask):
    """Two modules, two optimizers with separate losses, dropout: all of the engine."""

    def __init__(self, dropout=0.5, momentum=0.9, crash_at=None):
        torch.manual_seed(0)
        self.net = Net(NetConfig(dropout=dropout))
        self.head = nn.Linear(4, 1)
        self.momentum, self.crash_at = momentum, crash_at

    def modules(self):
        return {"net": self.net, "head": self.head}

    def configure_optimizers(self, modules):
        return {
            "net": torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=self.momentum),
            "head": torch.optim.Adam(self.head.parameters(), lr=0.01),
        }

    def training_step(self, batch, ctx):
        x, y = batch
        features = ctx.modules["net"](x)
        net_loss = (ctx.raw["head"](features).squeeze(1) - y).pow(2).mean()
        head_loss = (ctx.modules["head"](features.detach()).squeeze(1) - y).abs().mean()
        return StepOutput({"net": net_loss, "head": head_loss}, {"noise": torch.rand(())})

    def after_step(self, ctx):
        if ctx.step + 1 == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return {"rare": 5.0} if ctx.step == 1 else {}  # averaged over the steps reporting it


def toy_data(n=24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return [(x[i], x[i].sum().sin()) for i in range(n)]


def weights(task):
    return {**task.net.state_dict(), **{f"head.{k}": v for k, v in task.head.state_dict().items()}}


def run(task, out, steps, **kw):
    options = {"batch_size": 4, "seed": 3, "device": "cpu", "checkpoint_every": 2}
    resume = kw.pop("resume", True)
    train = TrainConfig(steps=steps, **(options | kw))
    return fit(task, toy_data(), out, train, resume=resume, progress=False)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    full = ToyTask()
    run(full, tmp_path / "full", 7)
    with pytest.raises(KeyboardInterrupt):
        run(ToyTask(crash_at=5), tmp_path / "cut", 7, log_every=1)
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000004"
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss')  # a line cut short by the crash
    resumed = ToyTask()
    result = run(resumed, tmp_path / "cut", 7, log_every=1)
    assert result.resumed_from == 4 and result.step == 7
    for key, value in weights(full).items():
        assert torch.equal(value, weights(resumed)[key]), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(1, 8))


def test_outputs_checkpoints_and_export(tmp_path):
    (tmp_path / "checkpoints" / ".tmp_step_00000009_x").mkdir(parents=True)
    task = ToyTask()
    result = run(task, tmp_path, 6, keep_checkpoints=2, log_every=3, warmup_steps=4)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name[0] != ".")
    assert names == ["step_00000004", "step_00000006"]
    assert result.checkpoint == tmp_path / "checkpoints" / "step_00000006"
    assert (result.checkpoint / "net" / "config.json").is_file()
    assert (result.checkpoint / "head" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert records[0]["lr"] == pytest.approx(0.1 * 3 / 4) and records[1]["lr"] == 0.1
    assert {"loss/net", "loss/head", "noise"} <= set(records[0])
    assert records[0]["rare"] == 5.0 and "rare" not in records[1]
    loaded = Net.from_pretrained(tmp_path / "net")
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), task.net.eval()(x))
    assert not torch.equal(loaded(x), ToyTask().net.eval()(x))  # it was trained
    again = run(ToyTask(), tmp_path, 6, warmup_steps=4)  # all done: resumes, stops at once
    assert again.resumed_from == 6 and again.step == 6


def test_cosine_schedule_warms_up_decays_to_its_floor_and_resumes_exactly(tmp_path):
    train = TrainConfig(steps=11, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    factors = [train.lr_factor(step) for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert TrainConfig(steps=11).lr_factor(10) == 1.0
    full = ToyTask()
    run(full, tmp_path / "full", 7, lr_schedule="cosine", log_every=1)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    assert records[0]["lr"] == 0.1 and records[-1]["lr"] == pytest.approx(0.01)
    with pytest.raises(KeyboardInterrupt):
        run(ToyTask(crash_at=5), tmp_path / "cut", 7, lr_schedule="cosine")
    resumed = ToyTask()
    run(resumed, tmp_path / "cut", 7, lr_schedule="cosine")
    for key, value in weights(full).items():
        assert torch.equal(value, weights(resumed)[key]), key
    with pytest.raises(ConfigError, match="lr_schedule was 'cosine', now 'constant'"):
        run(ToyTask(), tmp_path / "cut", 8)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_run_records_from_before_the_schedule_resume_as_constant(tmp_path):
    run(ToyTask(), tmp_path, 4)
    record = tmp_path / "checkpoints" / "step_00000004" / "run.json"
    saved = json.loads(record.read_text())
    del saved["train"]["lr_schedule"], saved["train"]["min_lr_ratio"]
    record.write_text(json.dumps(saved))
    assert run(ToyTask(), tmp_path, 6).resumed_from == 4


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    big, small = ToyTask(dropout=0.0, momentum=0.0), ToyTask(dropout=0.0, momentum=0.0)
    run(big, tmp_path / "big", 3, batch_size=4)
    run(small, tmp_path / "small", 3, batch_size=2, grad_accum_steps=2)
    for key, value in weights(big).items():
        assert torch.allclose(value, weights(small)[key], atol=1e-6), key


def test_data_order_depends_only_on_seed_and_shards_like_one_process():
    single = _BatchSampler(10, 4, seed=5, rank=0, world=1, shuffle=True)
    ranks = [_BatchSampler(10, 2, seed=5, rank=r, world=2, shuffle=True) for r in range(2)]
    it_single, it_ranks = iter(single), [iter(r) for r in ranks]
    for _ in range(6):  # crosses epoch boundaries
        assert sorted(next(it_single)) == sorted(next(it_ranks[0]) + next(it_ranks[1]))
    resumed = _BatchSampler(10, 4, seed=5, rank=0, world=1, shuffle=True)
    resumed.start = 4
    expected = list(iter_n(iter(single), 10))
    assert list(iter_n(iter(resumed), 6)) == expected[4:]
    assert single.shard(0) != single.shard(1)


def iter_n(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_bad_options_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs at least 40 items"):
        run(ToyTask(), tmp_path, 1, batch_size=40)
    with pytest.raises(ConfigError, match=r"TrainConfig\.grad_accum_steps"):
        run(ToyTask(), tmp_path, 1, grad_accum_steps=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            run(ToyTask(), tmp_path, 1, device="cuda")
