"""The shared training loop: exact resume, non-finite stop, atomic checkpoints, schedule."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from harness.train.checkpoint import load_checkpoint
from harness.train.loop import NonFiniteLossError, Preempted, ResumableSampler, train
from harness.train.optim import param_groups, warmup_cosine


class ToyModel(nn.Module):
    """A linear regressor exposing the DualEncoder-style ``losses`` hook the loop calls."""

    def __init__(self, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.nan_at_step = nan_at_step
        self.calls = 0

    def losses(self, batch):
        pred = self.lin(self.norm(batch["x"])).squeeze(-1) * self.logit_scale
        loss = ((pred - batch["y"]) ** 2).mean()
        self.calls += 1
        if self.nan_at_step is not None and self.calls > self.nan_at_step:
            loss = loss * float("nan")
        return {"mse": loss}


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


CFG = {"steps": 12, "batch_size": 8, "lr": 0.05, "weight_decay": 0.01, "warmup_steps": 2,
       "grad_clip": 1.0, "log_every": 1, "ckpt_every": 3, "seed": 3, "num_workers": 0,
       "device": "cpu"}


class SignalAt(ToyModel):
    """Sends this process SIGTERM during step ``k``, as SLURM does before a time limit."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def losses(self, batch):
        out = super().losses(batch)
        if self.calls == self.k:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def test_sigterm_then_rerun_is_bitwise_equal_to_uninterrupted(tmp_path):
    torch.manual_seed(0)
    full = ToyModel()
    train(full, Points(), _collate, CFG, tmp_path / "full")
    torch.manual_seed(0)
    with pytest.raises(Preempted, match="signal SIGTERM at step 7"):
        train(SignalAt(7), Points(), _collate, CFG, tmp_path / "part")
    state = load_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")
    assert state["step"] == 7 and state["samples_seen"] == 56 and not state["complete"]
    torch.manual_seed(123)  # a fresh process would not share the first run's RNG
    resumed = ToyModel()
    summary = train(resumed, Points(), _collate, CFG, tmp_path / "part")
    assert summary.steps == 12 and summary.samples_seen == 96
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_non_finite_loss_names_step_and_term_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 8: loss term 'mse' is nan"):
        train(ToyModel(nan_at_step=7), Points(), _collate, CFG, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 6 and state["complete"] is False
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 7  # steps 1-7 finished; step 8 produced the NaN
    assert {"loss/mse", "lr", "data_s", "step_s", "samples_per_s"} <= set(records[0])


def test_sampler_resumes_mid_epoch():
    stream = iter(ResumableSampler(10, seed=1))
    first = [next(stream) for _ in range(25)]
    later = iter(ResumableSampler(10, seed=1, start=13))
    assert [next(later) for _ in range(12)] == first[13:]
    assert sorted(first[:10]) == list(range(10))


def test_no_weight_decay_on_norms_biases_and_temperature():
    decay, no_decay = param_groups(ToyModel(), 0.1)
    assert len(decay["params"]) == 1  # lin.weight only
    assert len(no_decay["params"]) == 4  # lin.bias, norm.weight, norm.bias, logit_scale
    assert no_decay["weight_decay"] == 0.0


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
