"""Two gloo processes on CPU: global negatives, DDP training and GradCache equal one process.

One spawn (two ranks) runs every distributed scenario and writes its results to files; the
tests compare them with the same computations done here on one process. Spawning costs
seconds per interpreter, so it happens once per module.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.dist import first_host, world_info_from_env
from harness.models.contrastive import gather_features, symmetric_info_nce
from harness.train.checkpoint import load_checkpoint
from harness.train.loop import NonFiniteLossError, train
from harness.train.step import supports_feature_cache

WORLD = 2
N, DIM = 16, 6  # global rows of the toy data set, feature width


class PairData(torch.utils.data.Dataset):
    """Toy image/text vectors; ids repeat so positives also span ranks."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(11)
        self.img = torch.randn(N, DIM, generator=g)
        self.txt = self.img + 0.3 * torch.randn(N, DIM, generator=g)
        self.ids = torch.tensor([0, 1, 2, 3, 3, 4, 0, 5, 6, 7, 7, 8, 9, 1, 10, 11])

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        return {"x": self.img[i], "t": self.txt[i], "image_ids": self.ids[i]}


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class DualToy(nn.Module):
    """Two projections + temperature: a dual encoder whose loss needs global negatives."""

    def __init__(self, nan_at_call: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.img = nn.Linear(DIM, 4)
        self.txt = nn.Linear(DIM, 4)
        self.logit_scale = nn.Parameter(torch.tensor(1.5))
        self.nan_at_call, self.calls = nan_at_call, 0

    def losses(self, batch):
        return self.losses_from_features(self.train_features(batch))

    def train_features(self, batch):
        return {"img": F.normalize(self.img(batch["x"]), dim=-1),
                "txt": F.normalize(self.txt(batch["t"]), dim=-1), "ids": batch["image_ids"]}

    def losses_from_features(self, f):
        self.calls += 1
        loss = symmetric_info_nce(f["img"], f["txt"], self.logit_scale.exp(), f["ids"], f["ids"])
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        return {"itc": loss}


class PlainToy(DualToy):
    """The same model without the feature-cache protocol."""

    train_features = None  # type: ignore[assignment]

    def losses(self, batch):
        f = {"img": F.normalize(self.img(batch["x"]), dim=-1),
             "txt": F.normalize(self.txt(batch["t"]), dim=-1), "ids": batch["image_ids"]}
        return DualToy.losses_from_features(self, f)


CFG = {"steps": 5, "batch_size": 8, "lr": 0.1, "weight_decay": 0.01, "warmup_steps": 1,
       "grad_clip": 1.0, "log_every": 1, "ckpt_every": 1, "seed": 0, "num_workers": 0,
       "device": "cpu", "tensorboard": False, "progress": False}


def _grads_on(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    sum(model.losses(batch).values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    """Every distributed scenario on one rank; results go to files under ``out``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out_dir = Path(out)
    from harness.dist import init_distributed

    init_distributed("cpu")
    data = PairData()
    local = collate([data[i] for i in range(rank * N // WORLD, (rank + 1) * N // WORLD)])
    # 1. Gathered local loss through DDP vs the loss of the whole batch on one process.
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Fwd(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch):
            return sum(self.m.losses(batch).values())

    model = DualToy()
    ddp = DDP(Fwd(model))
    ddp(local).backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, out_dir / f"grads{rank}.pt")
    gathered = gather_features(local["x"], local["image_ids"])
    torch.save([t.clone() for t in gathered], out_dir / f"gathered{rank}.pt")
    # 2. train() under DDP, plain path and GradCache path (accum 2), and 3. NaN on rank 1 only.
    train(DualToy(), data, collate, CFG, out_dir / "ddp_plain")
    train(DualToy(), data, collate, {**CFG, "accum_steps": 2}, out_dir / "ddp_cache")
    try:
        train(DualToy(nan_at_call=4 if rank == 1 else None), data, collate, CFG,
              out_dir / "ddp_nan")
        message = "no error"
    except NonFiniteLossError as exc:
        message = str(exc)
    (out_dir / f"nan{rank}.txt").write_text(message)


def _entry(rank: int, port: int, out: str) -> None:
    try:
        _worker(rank, port, out)
    except BaseException:
        (Path(out) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Run the two-rank scenarios once; the folder holding their results."""
    out = tmp_path_factory.mktemp("ddp")
    import torch.multiprocessing as mp

    try:
        mp.spawn(_entry, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    except Exception as exc:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("error*.txt")))
        pytest.fail(f"a rank failed: {exc}\n{errors}", pytrace=False)
    return out


def test_gathered_local_loss_gradients_equal_single_process(ranks):
    data = PairData()
    reference = _grads_on(DualToy(), collate([data[i] for i in range(N)]))
    for rank in range(WORLD):
        grads = torch.load(ranks / f"grads{rank}.pt")
        for name, ref in reference.items():
            torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-6, msg=name)
    x0, ids0 = torch.load(ranks / "gathered0.pt")
    assert torch.equal(x0, data.img) and torch.equal(ids0, data.ids)


@pytest.mark.parametrize("run", ["ddp_plain", "ddp_cache"])
def test_ddp_training_equals_one_process_on_the_global_batch(ranks, tmp_path, run):
    accum = 2 if run == "ddp_cache" else 1
    single = DualToy()
    train(single, PairData(), collate, {**CFG, "accum_steps": accum}, tmp_path)
    state = load_checkpoint(ranks / run / "checkpoints" / "latest.pt")
    assert state["world_size"] == WORLD and state["samples_seen"] == 5 * 8
    assert len(state["rng_per_rank"]) == WORLD
    for name, ref in single.state_dict().items():
        torch.testing.assert_close(state["model"][name], ref, rtol=1e-5, atol=1e-6, msg=name)
    records = [json.loads(x) for x in (ranks / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # rank 0 alone wrote metrics


def test_nan_on_one_rank_stops_every_rank_and_keeps_last_checkpoint(ranks):
    for rank in range(WORLD):
        assert "step 4: loss term 'itc' is" in (ranks / f"nan{rank}.txt").read_text()
    state = load_checkpoint(ranks / "ddp_nan" / "checkpoints" / "latest.pt")
    assert state["step"] == 3 and not state["complete"]


def test_feature_cache_accumulation_equals_full_batch_gradient(tmp_path):
    data = PairData()
    runs = {}
    for accum in (1, 4):
        model = DualToy()
        train(model, data, collate, {**CFG, "accum_steps": accum}, tmp_path / str(accum))
        runs[accum] = model.state_dict()
    for name in runs[1]:
        torch.testing.assert_close(runs[4][name], runs[1][name], rtol=1e-5, atol=1e-6)
    assert supports_feature_cache(DualToy()) and not supports_feature_cache(PlainToy())


def test_plain_accumulation_warns_that_negatives_shrink(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="harness.train"):
        train(PlainToy(), PairData(), collate, {**CFG, "steps": 1, "accum_steps": 2}, tmp_path)
    assert "negatives are per micro-batch" in caplog.text


def test_world_info_from_every_launcher():
    torchrun = world_info_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                    "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.launcher) == \
        (3, 8, 1, "torchrun")
    slurm = world_info_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                                 "SLURM_JOB_NODELIST": "gpu[003-004,7],cpu1",
                                 "SLURM_JOB_ID": "4242"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (5, 8, 1)
    assert slurm.master_addr == "gpu003" and slurm.master_port == 20000 + 4242
    assert not world_info_from_env({}).distributed
    assert not world_info_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4",
                                    "HARNESS_DISTRIBUTED": "0"}).distributed
    assert first_host("node7") == "node7" and first_host("a-[1-3]") == "a-1"


def test_world_info_from_a_submitit_job(monkeypatch):
    # The process environment of task 5 of 8 of a submitit job on two nodes: submitit's own
    # reading of it (rendezvous port included) wins over the plain SLURM one.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "HARNESS_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
             "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_JOB_ID": "4242"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    plain = world_info_from_env()
    assert (plain.launcher, plain.master_port) == ("slurm", 20000 + 4242)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    env = world_info_from_env()
    assert env.launcher == "submitit"
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (5, 8, 1, "gpu003")
    assert 1024 <= env.master_port <= 65535


def test_feature_cache_replays_dropout_of_the_cached_pass():
    """With dropout, GradCache's gradient is that of one grad-enabled pass over the micro-batches."""
    from harness.train.optim import build_optimizer, build_scheduler
    from harness.train.step import Stepper, _split, resolve_precision

    class DropToy(DualToy):
        def train_features(self, batch):
            return super().train_features({**batch, "x": F.dropout(batch["x"], 0.5)})

    data = PairData()
    batch = collate([data[i] for i in range(8)])
    reference = DropToy()
    torch.manual_seed(123)
    feats = [reference.train_features(mb) for mb in _split(batch, 4)]
    merged = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
    sum(reference.losses_from_features(merged).values()).backward()
    model = DropToy()
    optimizer = build_optimizer(model, CFG)
    stepper = Stepper(model, optimizer, build_scheduler(optimizer, CFG), {**CFG, "accum_steps": 4},
                      resolve_precision("fp32", torch.device("cpu")), torch.device("cpu"))
    torch.manual_seed(123)
    stepper._feature_cache(_split(batch, 4))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
