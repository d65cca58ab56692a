"""Data-parallel training and evaluation on 2 CPU processes (gloo).

One spawn of two ranks runs most scenarios (process start-up dominates the cost) and writes
its results to files; the tests below check them against single-process references:
- a tiny BatchNorm-free model: 1 process with batch 2B == DDP with B per rank, with and
  without gradient accumulation, and DDP == ZeRO-1 == FSDP2; ZeRO-1 / FSDP2 checkpoint round trips;
- reduce_loss_dict with different loss terms on the ranks, and a rank whose batch has no boxes;
- the real Trainer (fcos-n, tiny synthetic set) under zero1 and fsdp, fsdp stopped and resumed
  from its distributed checkpoint == fsdp uninterrupted; distributed evaluation of its weights
  == single-process evaluation.
Two more spawns: the real Trainer under DDP (D-FINE-N and FCOS-n) and FSDP (D-FINE-N) on a set
where most images are background, so ranks get batches without a box; collectives that time out.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

STEPS, GLOBAL_BATCH, WORLD = 3, 8, 2
EVAL_BATCH = 3  # with 7 val images: shards of 4 and 3 -> 2 batches on rank 0, 1 on rank 1


# ---------------------------------------------------------------- tiny-model helpers
def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    # two groups as the real optimizer builds them: decayed weights, undecayed biases
    named = list(model.named_parameters())
    return torch.optim.SGD([
        {"name": "decay", "params": [p for n, p in named if n.endswith("weight")], "weight_decay": 1e-2},
        {"name": "no_decay", "params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ], lr=0.1, momentum=0.9)


def _data(steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(steps, GLOBAL_BATCH, 6, generator=g), torch.randn(steps, GLOBAL_BATCH, 3, generator=g)


def _train(model, optimizer, X, Y, rank=0, world=1, accumulate=1):
    from detforge.engine import parallel

    for step in range(X.shape[0]):
        xs, ys = X[step].chunk(world)[rank].chunk(accumulate), Y[step].chunk(world)[rank].chunk(accumulate)
        for m, (x, y) in enumerate(zip(xs, ys)):
            with parallel.gradient_sync(model, enabled=m == accumulate - 1):
                (F.mse_loss(model(x), y) / accumulate).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class _Cfg:
    def __init__(self, parallel: str) -> None:
        self.parallel, self.sync_bn = parallel, False


def _state(model) -> dict[str, torch.Tensor]:
    from detforge.engine import parallel

    return {k: v.detach().clone() for k, v in parallel.model_state_dict(model, all_ranks=True).items()}


def _wrapped(mode: str):
    from detforge.engine import parallel

    model = _tiny_model()
    return parallel.wrap(model, _sgd(model), _Cfg(mode), torch.device("cpu"))


# ---------------------------------------------------------------- the two ranks
def _tiny_scenarios(rank: int, out: dict, tmp: Path) -> None:
    import torch.distributed as dist

    from detforge.engine import parallel

    X, Y = _data()
    if rank == 0:  # single process, batch 2B: no collective in a plain module
        ref = _tiny_model()
        ref_opt = _sgd(ref)
        _train(ref, ref_opt, X, Y)
        out["reference"] = _state(ref)
        out["reference_momentum"] = [ref_opt.state[p]["momentum_buffer"].clone() for g in ref_opt.param_groups for p in g["params"]]
    for mode, acc in (("ddp", 1), ("ddp", 2), ("zero1", 1), ("fsdp", 1), ("fsdp", 2)):
        model, opt = _wrapped(mode)
        _train(model, opt, X, Y, rank, WORLD, acc)
        out[f"{mode}_acc{acc}"] = _state(model)
        out[f"{mode}_acc{acc}_optimizer"] = type(opt).__name__
        if (mode, acc) == ("zero1", 1):
            zero_model, zero_opt = model, opt
        if (mode, acc) == ("fsdp", 1):
            fsdp_model, fsdp_opt = model, opt

    # ZeRO-1 round trip: consolidate on rank 0, write, every rank loads, one more step each
    consolidated = parallel.optimizer_state_dict(zero_model, zero_opt)
    path = tmp / "zero1_optimizer.pt"
    if rank == 0:
        torch.save({"model": _state(zero_model), "optimizer": consolidated}, path)
        reloaded = torch.load(path, weights_only=True)
        out["zero1_consolidated_momentum"] = [s["momentum_buffer"] for _, s in sorted(reloaded["optimizer"]["state"].items())]
    out["zero1_rank_has_state"] = consolidated is not None
    dist.barrier()
    ckpt = torch.load(path, weights_only=True)
    restored, restored_opt = _wrapped("zero1")
    parallel.load_model_state_dict(restored, ckpt["model"])
    restored_opt.load_state_dict(ckpt["optimizer"])
    X2, Y2 = _data(4)
    _train(zero_model, zero_opt, X2[3:], Y2[3:], rank, WORLD)
    _train(restored, restored_opt, X2[3:], Y2[3:], rank, WORLD)
    out["zero1_continued"], out["zero1_restored"] = _state(zero_model), _state(restored)

    # FSDP2 round trip through torch.distributed.checkpoint
    parallel.save_sharded(fsdp_model, fsdp_opt, tmp / "fsdp_dcp")
    restored, restored_opt = _wrapped("fsdp")
    parallel.load_sharded(restored, restored_opt, tmp / "fsdp_dcp")
    out["fsdp_loaded"] = _state(restored)
    _train(fsdp_model, fsdp_opt, X2[3:], Y2[3:], rank, WORLD)
    _train(restored, restored_opt, X2[3:], Y2[3:], rank, WORLD)
    out["fsdp_continued"], out["fsdp_restored"] = _state(fsdp_model), _state(restored)


def _loss_scenarios(rank: int, out: dict, syn_root: Path) -> None:
    from detforge.config import build_config
    from detforge.engine import distributed as dist_utils
    from detforge.engine import parallel
    from detforge.models.zoo import build_model

    # different loss terms on the two ranks: compared first, then averaged where present
    terms = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)} if rank == 0 else {"a": torch.tensor(3.0)}
    out["reduced_mismatch"] = dist_utils.reduce_loss_dict(terms)
    # a real detector where rank 1's images have no boxes: DDP steps and the reduction finish
    cfg = build_config({"parallel": "ddp"})
    torch.manual_seed(0)
    model = build_model("fcos-n", 3)
    model.train()
    model, opt = parallel.wrap(model, torch.optim.SGD(model.parameters(), lr=0.01), cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(rank)
    x = torch.rand(2, 3, 64, 64, generator=g)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]]) if rank == 0 else torch.zeros(0, 4)
    labels = torch.tensor([1]) if rank == 0 else torch.zeros(0, dtype=torch.int64)
    targets = [{"boxes": boxes, "labels": labels}, {"boxes": boxes.clone(), "labels": labels.clone()}]
    for _ in range(2):
        losses = model(x, targets)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad()
    out["empty_rank_terms"] = {k: float(v) for k, v in losses.items()}
    out["empty_rank_reduced"] = dist_utils.reduce_loss_dict(losses)
    out["empty_rank_all_terms"] = dist_utils.all_gather_object(out["empty_rank_terms"])


def _trainer_scenarios(rank: int, out: dict, syn_root: Path, tmp: Path) -> None:
    from detforge.config import build_config
    from detforge.data.dataset import DetectionDataset
    from detforge.data.formats import load_dataset
    from detforge.engine.checkpoint import load_checkpoint
    from detforge.engine.sharding import build_eval_loader
    from detforge.engine.trainer import Trainer
    from detforge.engine.validator import evaluate
    from detforge.models.zoo import build_model

    base = dict(model="fcos-n", data=str(syn_root), imgsz=64, batch=4, workers=0, device="cpu",
                project=str(tmp / "runs"), exist_ok=True, plots=False, amp=False, mosaic=0.0,
                logger="none", verbose=False, warmup_epochs=0)
    zero = Trainer(build_config({**base, "epochs": 1, "parallel": "zero1", "accumulate": 2, "name": "zero1"})).train()
    out["zero1_trainer_dir"] = zero["save_dir"]
    # FSDP: 2 epochs straight, and the same run stopped at the start of epoch 2 and resumed
    fsdp = {**base, "epochs": 2, "parallel": "fsdp", "ema": False}
    full = Trainer(build_config({**fsdp, "name": "fsdp_full"}))
    out["fsdp_full_dir"] = full.train()["save_dir"]
    out["fsdp_full_model"] = _full_weights(full.model)
    cut = Trainer(build_config({**fsdp, "name": "fsdp"}))
    _stop_before_step(cut, 2)  # 2 steps per epoch: the first step of epoch 2
    with pytest.raises(_Stopped):
        cut.train()
    last = tmp / "runs" / "fsdp" / "weights" / "last.pt"
    out["fsdp_epoch1_model"] = load_checkpoint(last)["model"]
    resumed = Trainer(build_config({**base, "epochs": 2, "resume": str(last), "parallel": "fsdp"}))
    out["fsdp_resumed_dir"] = resumed.train()["save_dir"]
    out["fsdp_resumed_model"] = _full_weights(resumed.model)

    # distributed evaluation of the zero1 run's weights over unpadded shards
    ckpt = load_checkpoint(Path(zero["save_dir"]) / "weights" / "last.pt")
    model = build_model("fcos-n", len(ckpt["names"]))
    model.load_state_dict(ckpt["model"])
    data = load_dataset(str(syn_root))
    val_set = DetectionDataset(data.splits["val"], build_config({**base, "epochs": 1}), train=False)
    loader = build_eval_loader(val_set, EVAL_BATCH, 0, rank=rank, world_size=WORLD)
    out["eval_shard"] = [i for _, i in loader.sampler]
    out["eval_batches"] = len(loader)
    metrics, _, merged = evaluate(model, loader, data.names, 0.05, 0.5, torch.device("cpu"), show=False)
    out["eval_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    out["eval_images"] = sorted(merged)


class _Stopped(Exception):
    """Raised on every rank at the same step: an interruption at a known point."""


def _stop_before_step(trainer, iteration: int) -> None:
    real = trainer._optimizer_step

    def step() -> None:
        if trainer.iteration == iteration:
            raise _Stopped
        real()

    trainer._optimizer_step = step


def _full_weights(model) -> dict[str, torch.Tensor]:
    """Unsharded weights on every rank (a collective under FSDP)."""
    from detforge.engine import parallel

    return {k: v.detach().clone() for k, v in parallel.model_state_dict(model, all_ranks=True).items()}


def _worker(rank: int, port: int, tmp: str, syn_root: str) -> None:
    _rank_env(rank, port)
    from detforge.engine import distributed as dist_utils

    dist_utils.init_process_group(dist_utils.env_info(), use_cuda=False, timeout=120)
    out: dict = {}
    tmp_path = Path(tmp)
    try:
        _tiny_scenarios(rank, out, tmp_path)
        _loss_scenarios(rank, out, Path(syn_root))
        _trainer_scenarios(rank, out, Path(syn_root), tmp_path)
    finally:
        torch.save(out, tmp_path / f"rank{rank}.pt")
        dist_utils.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    from detforge.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("dist_synthetic"), n_train=8, n_val=7, size=96)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, eval_root) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    _spawn(_worker, (_free_port(), str(tmp), str(eval_root)), 400)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_states_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------- equality of the modes
@pytest.mark.parametrize("key", ["ddp_acc1", "ddp_acc2", "zero1_acc1", "fsdp_acc1", "fsdp_acc2"])
def test_data_parallel_equals_single_process(ranks, key):
    ref = ranks[0]["reference"]
    for r in range(WORLD):
        _assert_states_close(ranks[r][key], ref)
    # three SGD steps with lr 0.1 move the weights well beyond the tolerance
    assert (ranks[0][key]["0.weight"] - _tiny_model().state_dict()["0.weight"]).abs().max() > 1e-2


def test_modes_use_their_optimizers(ranks):
    assert ranks[0]["ddp_acc1_optimizer"] == "SGD"
    assert ranks[0]["zero1_acc1_optimizer"] == "ZeroRedundancyOptimizer"
    assert ranks[0]["fsdp_acc1_optimizer"] == "SGD"


def test_zero1_checkpoint_round_trip(ranks):
    # the consolidated ZeRO state equals the single-process optimizer's momentum buffers
    got, want = ranks[0]["zero1_consolidated_momentum"], ranks[0]["reference_momentum"]
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    assert ranks[0]["zero1_rank_has_state"] and not ranks[1]["zero1_rank_has_state"]
    _assert_states_close(ranks[0]["zero1_restored"], ranks[0]["zero1_continued"], atol=0)
    assert not torch.equal(ranks[0]["zero1_continued"]["0.weight"], ranks[0]["zero1_acc1"]["0.weight"])


def test_fsdp_checkpoint_round_trip(ranks):
    _assert_states_close(ranks[0]["fsdp_loaded"], ranks[0]["fsdp_acc1"], atol=0)
    _assert_states_close(ranks[0]["fsdp_restored"], ranks[0]["fsdp_continued"], atol=0)
    _assert_states_close(ranks[0]["fsdp_continued"], ranks[0]["zero1_continued"])


# ---------------------------------------------------------------- losses
def test_reduce_loss_dict_with_different_terms(ranks):
    for r in range(WORLD):
        assert ranks[r]["reduced_mismatch"] == pytest.approx({"a": 2.0, "b": 2.0})


def test_rank_without_boxes_does_not_hang(ranks):
    per_rank = ranks[0]["empty_rank_all_terms"]
    keys = set().union(*per_rank)
    expected = {k: sum(t[k] for t in per_rank if k in t) / sum(k in t for t in per_rank) for k in keys}
    for r in range(WORLD):
        assert ranks[r]["empty_rank_reduced"] == pytest.approx(expected)


# ---------------------------------------------------------------- the real trainer
def test_trainer_zero1_writes_once(ranks):
    from detforge.engine.checkpoint import load_checkpoint

    run = Path(ranks[0]["zero1_trainer_dir"])
    assert ranks[1]["zero1_trainer_dir"] == str(run)
    ckpt = load_checkpoint(run / "weights" / "last.pt")  # weights_only: consolidated state is plain
    assert ckpt["optimizer"]["param_groups"] and ckpt["optimizer"]["state"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["fsdp", "fsdp_full", "zero1"]


def test_trainer_fsdp_resumes_from_distributed_checkpoint(ranks):
    from detforge.engine.checkpoint import load_checkpoint

    run = Path(ranks[0]["fsdp_resumed_dir"])
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert run.name == "fsdp" and (run / "weights" / ckpt["dcp_dir"] / ".metadata").is_file()
    assert [d.name for d in (run / "weights").glob("last_dcp_*")] == [ckpt["dcp_dir"]]  # older ones pruned
    assert ckpt["optimizer"] is None and ckpt["epoch"] == 1 and len(ckpt["history"]) == 2
    # the resumed run equals the uninterrupted one: the weights on every rank (parameters and
    # BatchNorm statistics, which FSDP takes from rank 0 wherever weights are read) and the
    # logged epoch-2 loss, lr and validation metrics
    full = ranks[0]["fsdp_full_model"]
    assert len(full) > 50 and any("running_mean" in k for k in full)
    for r in range(WORLD):
        _assert_states_close(ranks[r]["fsdp_resumed_model"], full, atol=1e-7)
    full_rows, cut_rows = _csv_rows(Path(ranks[0]["fsdp_full_dir"]) / "metrics.csv"), _csv_rows(run / "metrics.csv")
    assert len(full_rows) == len(cut_rows) == 2
    for a, b in zip(full_rows, cut_rows):
        for key in ("loss", "lr", "map50_95", "map50"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6, abs=1e-9), (a["epoch"], key)
    # and epoch 2 did move the weights (the comparison is not between two copies of epoch 1)
    epoch1 = ranks[0]["fsdp_epoch1_model"]
    assert epoch1.keys() == full.keys()
    assert max((full[k].float() - epoch1[k].float()).abs().max().item() for k in epoch1) > 1e-4


# ---------------------------------------------------------------- evaluation
def test_eval_shards_are_unpadded_and_uneven(ranks):
    shards = [ranks[r]["eval_shard"] for r in range(WORLD)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert [ranks[r]["eval_batches"] for r in range(WORLD)] == [2, 1]
    # predictions are gathered on rank 0, scored once there; other ranks receive the metrics only
    assert ranks[0]["eval_images"] == list(range(7))
    assert ranks[1]["eval_images"] == []


def test_distributed_eval_equals_single_process(ranks, eval_root):
    from detforge.config import build_config
    from detforge.data.dataset import DetectionDataset
    from detforge.data.formats import load_dataset
    from detforge.engine.checkpoint import load_checkpoint
    from detforge.engine.sharding import build_eval_loader
    from detforge.engine.validator import evaluate
    from detforge.models.zoo import build_model

    ckpt = load_checkpoint(Path(ranks[0]["zero1_trainer_dir"]) / "weights" / "last.pt")
    model = build_model("fcos-n", len(ckpt["names"]))
    model.load_state_dict(ckpt["model"])
    data = load_dataset(str(eval_root))
    cfg = build_config({"imgsz": 64, "mosaic": 0.0})
    loader = build_eval_loader(DetectionDataset(data.splits["val"], cfg, train=False), EVAL_BATCH, 0)
    single, _, _ = evaluate(model, loader, data.names, 0.05, 0.5, torch.device("cpu"), show=False)
    single = {k: v for k, v in single.items() if isinstance(v, (int, float))}
    assert single["map50_95"] > 0  # the comparison is not between two empty results
    for r in range(WORLD):
        assert ranks[r]["eval_metrics"] == single  # exactly, not approximately


# ---------------------------------------------------------------- no process group needed
def test_sync_bn_on_cpu_warns_and_keeps_batchnorm(caplog):
    from detforge.engine.parallel import convert_sync_bn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    with caplog.at_level(logging.WARNING, logger="detforge"):
        out = convert_sync_bn(model, torch.device("cpu"), enabled=True)
    assert out is model and isinstance(model[1], nn.BatchNorm2d)
    assert "SyncBatchNorm cannot train on CPU" in caplog.text


def test_sync_bn_conversion_of_the_module_tree():
    from detforge.engine.parallel import convert_sync_bn
    from detforge.models.zoo import build_model

    model = build_model("fcos-n", 3)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    params = {n: p for n, p in model.named_parameters()}
    out = convert_sync_bn(model, torch.device("cuda", 0), enabled=True)  # conversion itself needs no GPU
    converted = {n for n, m in out.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    assert len(bns) > 10 and converted == set(bns)
    assert not any(type(m) is nn.BatchNorm2d for m in out.modules())
    # the same Parameter objects: an optimizer built before the conversion stays valid
    assert all(p is params[n] for n, p in out.named_parameters())
    assert convert_sync_bn(model, torch.device("cpu"), enabled=False) is model


def test_shard_indices_partition_without_padding():
    from detforge.engine.sharding import shard_indices

    for n in (0, 1, 5, 8):
        shards = [shard_indices(n, r, 3) for r in range(3)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank 3 is outside world_size 3"):
        shard_indices(4, 3, 3)


# ---------------------------------------------------------------- seed-stability bench
def test_stability_summary_hand_computed():
    from detforge.bench.stability import summarize

    rows = [{"seed": i, "map50": v} for i, v in enumerate([1.0, 2.0, 3.0, 4.0])]
    s = summarize(rows)
    assert list(s) == ["map50"]
    assert s["map50"]["mean"] == 2.5 and s["map50"]["min"] == 1.0 and s["map50"]["max"] == 4.0
    assert s["map50"]["std"] == pytest.approx((5 / 3) ** 0.5)  # sample std: sum of squares 5 over n-1 = 3
    assert summarize([{"seed": 0, "f1": 0.3}])["f1"]["std"] == 0.0


def test_stability_bench_trains_each_seed(eval_root, tmp_path, capsys):
    import csv
    import json

    import yaml

    from detforge.bench.stability import run_stability
    from detforge.config import ConfigError
    from detforge.engine.checkpoint import load_checkpoint

    with pytest.raises(ConfigError, match="'seeds'"):
        run_stability({"seeds": 0})
    args = dict(model="fcos-n", data=str(eval_root), imgsz=64, batch=4, workers=0, device="cpu", epochs=1,
                project=str(tmp_path), name="stab", plots=False, amp=False, mosaic=0.0, logger="none",
                verbose=False, warmup_epochs=0, conf=0.05)
    assert run_stability({**args, "seeds": 2}) == 0
    out = tmp_path / "stab"
    per_seed = [json.loads((out / f"seed{s}" / "metrics.json").read_text()) for s in range(2)]
    assert [yaml.safe_load((out / f"seed{s}" / "config.yaml").read_text())["seed"] for s in range(2)] == [0, 1]
    w0, w1 = (load_checkpoint(out / f"seed{s}" / "weights" / "last.pt")["model"] for s in range(2))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())
    summary = json.loads((out / "stability.json").read_text())["summary"]
    for key in ("map50_95", "map50", "f1", "fitness"):
        a, b = per_seed[0][key], per_seed[1][key]
        assert summary[key]["mean"] == pytest.approx((a + b) / 2)
        assert summary[key]["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    rows = list(csv.DictReader(open(out / "stability.csv")))
    assert [r["seed"] for r in rows] == ["0", "1", "mean", "std"]
    # the curve's figures come from each seed's metrics.csv (one epoch: its last row)
    for s, row in enumerate(rows[:2]):
        last = list(csv.DictReader(open(out / f"seed{s}" / "metrics.csv")))[-1]
        assert float(row["last_map50_95"]) == pytest.approx(float(last["map50_95"]))
        assert float(row["last5_swing"]) == 0.0 and float(row["best_minus_last"]) == 0.0
    text = capsys.readouterr().out
    assert "mean" in text and f"curves: {out / 'curves.png'}" in text and (out / "curves.png").stat().st_size > 10_000


# ---------------------------------------------------------------- spawning
def _spawn(fn, args: tuple, limit_s: float) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.time() + limit_s
    while not ctx.join(timeout=2):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-rank job did not finish in {limit_s:.0f} s (a collective hung)")


def _rank_env(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    logging.getLogger("detforge").setLevel(logging.WARNING)


# ---------------------------------------------------------------- the real trainer under DDP
DDP_IMGSZ = 128
# augmentations off: each rank's batch is then exactly the image the sampler gave it, whatever
# its random stream, so a single process can replay the same batches
DDP_BASE = dict(imgsz=DDP_IMGSZ, workers=0, device="cpu", exist_ok=True, plots=False, amp=False, logger="none",
                verbose=False, epochs=2, warmup_epochs=0, mosaic=0.0, mixup=0.0, copy_blend=0.0, cutout=0.0,
                fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, multi_scale=0.0,
                precise_bn=4)  # every validation re-measures BatchNorm statistics: no collective, no hang


@pytest.fixture(scope="module")
def background_root(tmp_path_factory) -> Path:
    """4 training images, only one with boxes: 2 steps of 1 image per rank put a background
    image beside it in one step (one rank without a box) and two in the other (no rank)."""
    from detforge.data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path_factory.mktemp("bg_synthetic"), n_train=4, n_val=2, size=DDP_IMGSZ)
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    keep = next(p for p in labels if p.read_text().strip())
    for p in labels:
        if p != keep:
            p.write_text("")
    return root


def _record_batches(seen: list) -> Any:
    """Box counts of every training forward of a DetectionModel, from a global module hook."""
    from detforge.models.base import DetectionModel

    def hook(module, args):
        if isinstance(module, DetectionModel) and module.training and len(args) > 1 and args[1] is not None:
            seen.append([len(t["boxes"]) for t in args[1]])

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


# (model, parallel mode, epochs): 2 steps of 2 ranks per epoch
TRAINER_RUNS = (("fcos-n", "ddp", 2), ("dfine-n", "ddp", 2), ("dfine-n", "fsdp", 1))


def _ddp_trainer_worker(rank: int, port: int, tmp: str, root: str) -> None:
    _rank_env(rank, port)
    from detforge.config import build_config
    from detforge.engine import distributed as dist_utils
    from detforge.engine.trainer import Trainer

    out: dict = {}
    try:
        for model, mode, epochs in TRAINER_RUNS:
            key, seen = f"{model}/{mode}", []
            handle = _record_batches(seen)
            # the first Trainer creates the process group from dist_timeout
            trainer = Trainer(build_config({**DDP_BASE, "model": model, "data": root, "batch": 2, "parallel": mode,
                                            "epochs": epochs, "dist_timeout": 300, "project": str(Path(tmp) / "runs"),
                                            "name": f"{model}-{mode}"}))
            out[f"{key}_dir"] = trainer.train()["save_dir"]
            handle.remove()
            out[f"{key}_batches"] = seen
            out[f"{key}_wrapper"] = type(trainer.train_model).__name__
            names = [n for n, _ in trainer.model.named_parameters()]
            weights = _full_weights(trainer.train_model)  # gathered under FSDP
            out[f"{key}_params"] = {n: weights[n] for n in names}
        out["timeout_s"] = dist_utils.collective_timeout()
    finally:
        torch.save(out, Path(tmp) / f"rank{rank}.pt")
        dist_utils.destroy()


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory, background_root) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp_trainer")
    _spawn(_ddp_trainer_worker, (_free_port(), str(tmp), str(background_root)), 400)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def fcos_single_process(tmp_path_factory, background_root) -> dict:
    """FCOS-n in one process, batch 1 with accumulate 2: the same two images per optimizer step
    as DDP's two ranks, each through BatchNorm and the loss on its own, as on its rank."""
    from detforge.config import build_config
    from detforge.engine.trainer import Trainer
    from detforge.models.base import DetectionModel

    initial: dict[str, torch.Tensor] = {}

    def first_forward(module, args):
        if isinstance(module, DetectionModel) and not initial:
            initial.update({n: p.detach().clone() for n, p in module.named_parameters()})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the ranks: the same float summation order
    handle = torch.nn.modules.module.register_module_forward_pre_hook(first_forward)
    try:
        trainer = Trainer(build_config({**DDP_BASE, "model": "fcos-n", "data": str(background_root), "batch": 1,
                                        "accumulate": 2, "project": str(tmp_path_factory.mktemp("single")),
                                        "name": "fcos"}))
        save_dir = trainer.train()["save_dir"]
    finally:
        handle.remove()
        torch.set_num_threads(threads)
    return {"dir": save_dir, "initial": initial,
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()}}


@pytest.mark.slow
@pytest.mark.parametrize("model, mode, epochs", TRAINER_RUNS)
def test_trainer_with_background_only_batches(ddp_ranks, model, mode, epochs):
    """The families finish under DDP (and D-FINE under FSDP) although a rank's batch had no box
    (D-FINE's denoising embedding used to get no gradient there: DDP waited for it forever)."""
    key = f"{model}/{mode}"
    seen = [ranks[f"{key}_batches"] for ranks in ddp_ranks]
    assert len(seen[0]) == len(seen[1]) == 2 * epochs  # 2 steps per epoch, 1 image per rank
    steps = list(zip(*seen))
    assert any((a == [0]) != (b == [0]) for a, b in steps), steps  # one rank with boxes, one without
    assert any(a == b == [0] for a, b in steps), steps  # no rank with a box
    wrapper = ddp_ranks[0][f"{key}_wrapper"]
    assert wrapper == "DistributedDataParallel" if mode == "ddp" else wrapper.startswith("FSDP")
    p0, p1 = ddp_ranks[0][f"{key}_params"], ddp_ranks[1][f"{key}_params"]
    assert p0.keys() == p1.keys() and len(p0) > 100
    for k in p0:  # the replicas (or gathered shards) are identical, and the steps left them finite
        assert torch.isfinite(p0[k]).all(), k
        assert torch.equal(p0[k], p1[k]), k
    rows = _csv_rows(Path(ddp_ranks[0][f"{key}_dir"]) / "metrics.csv")
    assert len(rows) == epochs and all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_ddp_trainer_equals_single_process_accumulation(ddp_ranks, fcos_single_process):
    """FCOS-n on 2 ranks x 1 image == 1 process x 1 image x accumulate 2. Not the same as one
    process on the combined batch of 2: BatchNorm statistics and FCOS's loss normalisation
    (by the positives of the batch) are per rank under DDP, as they are per micro-batch here."""
    ddp, single = ddp_ranks[0]["fcos-n/ddp_params"], fcos_single_process["params"]
    _assert_states_close(ddp, single, atol=1e-6)  # measured: bit-identical
    initial = fcos_single_process["initial"]
    assert initial.keys() == ddp.keys()
    assert max((ddp[k] - initial[k]).abs().max().item() for k in ddp) > 1e-3  # 4 steps moved them well past the tolerance
    a = _csv_rows(Path(ddp_ranks[0]["fcos-n/ddp_dir"]) / "metrics.csv")
    b = _csv_rows(Path(fcos_single_process["dir"]) / "metrics.csv")
    for ra, rb in zip(a, b):
        assert float(ra["lr"]) == pytest.approx(float(rb["lr"]), rel=1e-9)
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)


@pytest.mark.slow
def test_trainer_takes_dist_timeout(ddp_ranks):
    assert [r["timeout_s"] for r in ddp_ranks] == [300.0, 300.0]


# ---------------------------------------------------------------- hangs become errors
TIMEOUT_S = 3


def _wait_for(path: Path, limit_s: float = 60) -> None:
    deadline = time.time() + limit_s
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, use_b: bool):
        y = self.a(x)
        return self.b(y) if use_b else y


def _timeout_worker(rank: int, port: int, port2: int, tmp: str) -> None:
    _rank_env(rank, port)
    from detforge.engine import distributed as dist_utils
    from detforge.engine import parallel
    from detforge.engine.distributed import DistributedError

    tmp_path, out = Path(tmp), {}
    try:
        # 1. rank 1 skips a collective (and stays alive): rank 0 fails after dist_timeout
        dist_utils.init_process_group(dist_utils.env_info(), use_cuda=False, timeout=TIMEOUT_S)
        if rank == 0:
            t0 = time.time()
            try:
                dist_utils.any_rank(True)
            except DistributedError as e:
                out["skipped"], out["skipped_s"] = str(e), time.time() - t0
            (tmp_path / "skipped_done").touch()
        else:
            _wait_for(tmp_path / "skipped_done")
        dist_utils.destroy()

        # 2. DDP, a parameter without gradient on rank 0: rank 0 names it at once; rank 1,
        # left waiting in backward's all-reduce, fails after dist_timeout
        os.environ["MASTER_PORT"] = str(port2)
        dist_utils.init_process_group(dist_utils.env_info(), use_cuda=False, timeout=TIMEOUT_S)
        model = _TwoHeads()
        model, _ = parallel.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), _Cfg("ddp"), torch.device("cpu"))
        t0 = time.time()
        try:
            with parallel.gradient_sync(model, enabled=True):
                model(torch.ones(2, 4), use_b=rank == 1).sum().backward()
        except DistributedError as e:
            out["unused"], out["unused_s"] = str(e), time.time() - t0
        (tmp_path / f"unused_done{rank}").touch()
        _wait_for(tmp_path / f"unused_done{1 - rank}")  # rank 0 stays until rank 1 timed out
    finally:
        torch.save(out, tmp_path / f"rank{rank}.pt")
    # the process group is broken on purpose: leave without waiting for its teardown
    os._exit(0)


@pytest.fixture(scope="module")
def timeout_ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("timeouts")
    _spawn(_timeout_worker, (_free_port(), _free_port(), str(tmp)), 120)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_skipped_collective_fails_after_dist_timeout(timeout_ranks):
    msg = timeout_ranks[0]["skipped"]
    assert msg.startswith("rank 0 of 2: any_rank at test_distributed.py:")
    assert f"timed out after {TIMEOUT_S} s (dist_timeout)" in msg and "\n" not in msg
    assert TIMEOUT_S - 0.5 < timeout_ranks[0]["skipped_s"] < TIMEOUT_S + 20


def test_parameter_without_gradient_is_named_not_waited_for(timeout_ranks):
    first, waiting = timeout_ranks[0]["unused"], timeout_ranks[1]["unused"]
    assert first.startswith("rank 0 of 2: 2 of 4 trainable parameters got no gradient in this step (b.weight, b.bias)")
    assert "find_unused_parameters" in first
    assert timeout_ranks[0]["unused_s"] < TIMEOUT_S  # at once, not after the timeout
    assert waiting.startswith("rank 1 of 2: forward/backward (gradient sync) at test_distributed.py:")
    assert f"timed out after {TIMEOUT_S} s" in waiting and "no gradient on one rank" in waiting


def test_distributed_error_passes_other_errors_through():
    from detforge.engine.distributed import collective, is_comm_failure

    with pytest.raises(ValueError, match="shape"):
        with collective("any_rank"):
            raise ValueError("shape mismatch")
    assert is_comm_failure(RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms"))
    assert not is_comm_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x4 and 3x4)"))


def test_fsdp_refuses_a_model_that_needs_find_unused_parameters():
    from detforge.engine.parallel import wrap_model

    model = _tiny_model()
    model.find_unused_parameters = True
    with pytest.raises(ValueError, match="parallel=fsdp: Sequential leaves some parameters out of the loss"):
        wrap_model(model, _Cfg("fsdp"), torch.device("cpu"))
