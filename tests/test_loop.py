"""The shared training loop: exact resume, non-finite stop, atomic checkpoints, schedule."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from harness.train.checkpoint import load_checkpoint
from harness.train.loop import NonFiniteLossError, Preempted, ResumableSampler, train
from harness.train.optim import param_groups, warmup_cosine


class ToyModel(nn.Module):
    """A linear regressor exposing the DualEncoder-style ``losses`` hook the loop calls."""

    def __init__(self, nan_at_step: int | None = None, noisy: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.nan_at_step = nan_at_step
        self.noisy = noisy
        self.calls = 0

    def losses(self, batch):
        x = batch["x"]
        if self.noisy:  # dropout draws from the torch generator
            x = nn.functional.dropout(x, 0.25, training=True)
        pred = self.lin(self.norm(x)).squeeze(-1) * self.logit_scale
        if self.noisy:  # after the norm, which would cancel a shift: numpy and Python noise
            pred = pred + float(np.random.normal(0, 0.1)) + random.gauss(0, 0.1)
        loss = ((pred - batch["y"]) ** 2).mean()
        self.calls += 1
        if self.nan_at_step is not None and self.calls > self.nan_at_step:
            loss = loss * float("nan")
        return {"mse": loss}


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 40, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.augment = augment

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        # Augmentation from the global torch RNG, as image transforms draw theirs.
        x = self.x[i] + 0.1 * torch.randn(4) if self.augment else self.x[i]
        return {"x": x, "y": self.y[i]}


def _collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


CFG = {"steps": 12, "batch_size": 8, "lr": 0.05, "weight_decay": 0.01, "warmup_steps": 2,
       "grad_clip": 1.0, "log_every": 1, "ckpt_every": 3, "seed": 3, "num_workers": 0,
       "device": "cpu"}


class SignalAt(ToyModel):
    """Sends this process SIGTERM during step ``k``, as SLURM does before a time limit."""

    def __init__(self, k: int, noisy: bool = False) -> None:
        super().__init__(noisy=noisy)
        self.k = k

    def losses(self, batch):
        out = super().losses(batch)
        if self.calls == self.k:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_sigterm_then_rerun_is_bitwise_equal_to_uninterrupted(tmp_path):
    # Dropout and numpy / Python noise in the model, augmentation in the data. The resumed run
    # matches only if torch's generator (dropout) comes back from the checkpoint; numpy's and
    # Python's are reseeded by the loader at every sample position, so they match either way.
    _reseed(0)
    full = ToyModel(noisy=True)
    train(full, Points(augment=True), _collate, CFG, tmp_path / "full")
    _reseed(0)
    with pytest.raises(Preempted, match="signal SIGTERM at step 7"):
        train(SignalAt(7, noisy=True), Points(augment=True), _collate, CFG, tmp_path / "part")
    state = load_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")
    assert state["step"] == 7 and state["samples_seen"] == 56 and not state["complete"]
    _reseed(123)  # a fresh process would not share the first run's RNG
    resumed = ToyModel(noisy=True)
    summary = train(resumed, Points(augment=True), _collate, CFG, tmp_path / "part")
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


def test_no_weight_decay_on_tokens_positions_and_declared_names():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
            self.table = nn.Parameter(torch.zeros(3, 4))
            self.proj = nn.Linear(4, 4, bias=False)

        def no_weight_decay(self) -> set[str]:
            return {"table"}

    model = nn.Sequential(Tokens())
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["0.proj.weight"]
    assert {names[id(p)] for p in no_decay["params"]} == {"0.cls_token", "0.pos_embed", "0.table"}


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


class NoisyPoints(Points):
    """Points with per-sample augmentation drawn from torch, random and NumPy."""

    def __getitem__(self, i):
        import random

        import numpy as np

        jitter = torch.randn(4) * 0.1 + random.random() * 0.1 + float(np.random.rand()) * 0.1
        return {"x": self.x[i] + jitter, "y": self.y[i]}


class DropoutToy(ToyModel):
    """Dropout draws from the main process's torch RNG, which checkpoints restore."""

    def __init__(self, k: int | None = None) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.k = k

    def losses(self, batch):
        out = super().losses({"x": self.drop(batch["x"]), "y": batch["y"]})
        if self.k is not None and self.calls == self.k:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def test_workers_and_resume_do_not_change_augmentation_or_dropout(tmp_path):
    """Per-sample seeds from (seed, position): 0 or 2 workers, interrupted or not, same bits."""
    cfg = {**CFG, "tensorboard": False}
    runs = {}
    for name, workers in (("w0", 0), ("w2", 2)):
        torch.manual_seed(0)
        model = DropoutToy()
        train(model, NoisyPoints(), _collate, {**cfg, "num_workers": workers}, tmp_path / name)
        runs[name] = model.state_dict()
    torch.manual_seed(0)
    with pytest.raises(Preempted):
        train(DropoutToy(k=5), NoisyPoints(), _collate, {**cfg, "num_workers": 2},
              tmp_path / "part")
    torch.manual_seed(99)
    resumed = DropoutToy()
    train(resumed, NoisyPoints(), _collate, {**cfg, "num_workers": 2}, tmp_path / "part")
    runs["resumed"] = resumed.state_dict()
    for name in ("w2", "resumed"):
        for key, value in runs["w0"].items():
            assert torch.equal(value, runs[name][key]), (name, key)


def test_sampler_gives_each_rank_its_slice_of_every_global_batch():
    single = iter(ResumableSampler(10, seed=4, start=4))
    stream = [next(single) for _ in range(12)]
    ranks = [iter(ResumableSampler(10, seed=4, start=4, rank=r, world_size=2, batch_size=2))
             for r in range(2)]
    split = [[next(ranks[r]) for _ in range(6)] for r in range(2)]
    for g in range(3):  # global batch g = rank 0's slice then rank 1's
        assert stream[4 * g:4 * g + 4] == split[0][2 * g:2 * g + 2] + split[1][2 * g:2 * g + 2]


def test_stale_temp_files_are_removed_and_metrics_and_tensorboard_written(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / ".latest.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train(ToyModel(), Points(), _collate, {**CFG, "steps": 2}, tmp_path)
    assert not list(ckpt_dir.glob("*.tmp"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    state = load_checkpoint(ckpt_dir / "latest.pt")
    assert state["complete"] and state["world_size"] == 1 and state["scaler"] is None


def test_uneven_batch_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="accum_steps=3 must divide the per-rank batch 8"):
        train(ToyModel(), Points(), _collate, {**CFG, "accum_steps": 3}, tmp_path)


# --- WebDataset shards --------------------------------------------------------------------


def _shards(tmp_path):
    from harness.data.synthetic import generate

    generate(tmp_path / "data", n_images=20, pretrain_pairs=32, shard_size=8, image_size=32)
    return str(tmp_path / "data" / "pretrain" / "shards" / "pretrain-*.tar")


def _augment(image):
    """A transform drawing from torch and ``random``, so seeding is visible in its output."""
    import random

    import torchvision.transforms.functional as TF

    return TF.to_tensor(image)[:, :8, :8] + torch.rand(1) + random.random()


def _pairs_collate(items):
    return {"images": torch.stack([it["image"] for it in items]),
            "image_ids": torch.tensor([it["image_id"] for it in items])}


def _batches(dataset, n, *, workers=2, batch=4, done=0, rank=0, world=1):
    from torch.utils.data import DataLoader

    dataset.set_position(rank=rank, world_size=world, batches_done=done, batch_size=batch)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers,
                        collate_fn=_pairs_collate)
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(next(it))
    return out


def test_shard_stream_is_seeded_and_resumes_exactly(tmp_path):
    from harness.data.pretrain import ShardPairs

    pattern = _shards(tmp_path)
    make = lambda seed: ShardPairs(pattern, _augment, seed=seed, shuffle_buffer=6)  # noqa: E731
    first = _batches(make(1), 7)
    again = _batches(make(1), 7)
    later = _batches(make(1), 4, done=3)  # what a run resumed after 3 batches reads
    other = _batches(make(2), 7)
    for a, b in zip(first, again):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["image_ids"], b["image_ids"])
    for a, b in zip(first[3:], later):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["image_ids"], b["image_ids"])
    assert not all(torch.equal(a["image_ids"], b["image_ids"]) for a, b in zip(first, other))


def test_unresampled_shards_split_across_ranks_and_workers(tmp_path):
    from harness.data.pretrain import ShardPairs

    pattern = _shards(tmp_path)  # 4 shards of 8 pairs: one shard per (rank, worker) stream
    seen = []
    for rank in range(2):
        dataset = ShardPairs(pattern, _augment, resampled=False, seed=0)
        batches = _batches(dataset, 4, rank=rank, world=2)  # 2 workers x 2 batches of 4
        seen += [int(i) for b in batches for i in b["image_ids"]]
    assert len(seen) == 32 and len(set(seen)) == 32  # every pair once, no rank overlap
    with pytest.raises(Exception, match="4 shards cannot feed 6 readers"):
        _batches(ShardPairs(pattern, _augment, resampled=False), 1, workers=0, rank=0, world=6)
