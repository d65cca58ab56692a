"""A training run's checkpoints: what the trainer writes at the end of each epoch (and inside
long ones) and reads back on resume, through the schema of engine/checkpoint.py. Functions of
the Trainer, kept apart so the loop reads as a loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detforge.engine import distributed as dist_utils
from detforge.engine import parallel
from detforge.engine.checkpoint import (
    ModelRecord,
    inference_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_checkpoint,
)

LOG = logging.getLogger("detforge")


def dcp_dir(trainer) -> Path:
    """FSDP's sharded state goes to a new folder per save, named in last.pt, so a kill
    between the two writes leaves last.pt pointing at the complete older folder."""
    return trainer.weights_dir / f"last_dcp_{trainer.iteration}"


def prune_dcp(trainer, keep: str | None) -> None:
    import shutil

    for d in trainer.weights_dir.glob("last_dcp_*"):
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)


def gather_state(trainer) -> dict[str, Any]:
    """Model and optimizer state for checkpoints; every rank calls it (ZeRO consolidates on
    rank 0; FSDP gathers the weights on rank 0 and writes its sharded state beside)."""
    state = {
        "model": parallel.model_state_dict(trainer.train_model, all_ranks=False),
        "optimizer": parallel.optimizer_state_dict(trainer.train_model, trainer.optimizer),
        "dcp_dir": None,
    }
    if parallel.is_fsdp(trainer.train_model):
        folder = dcp_dir(trainer)
        parallel.save_sharded(trainer.train_model, trainer.optimizer, folder)
        state["dcp_dir"] = folder.name
    # each rank's RNG streams (dropout, denoising noise): a resume restores every rank's own
    state["rng"] = dist_utils.all_gather_object(rng_state())
    return state


def model_record(trainer, epoch: int, metrics: dict[str, Any]) -> ModelRecord:
    cfg = trainer.cfg
    return ModelRecord(
        model_name=trainer.model_name, num_classes=len(trainer.names), names=trainer.names,
        model_options=trainer.model_options, imgsz=cfg.imgsz, resize_mode=cfg.resize_mode, conf=cfg.conf,
        config=cfg.model_dump(mode="json"), epoch=epoch,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    )


def save(trainer, epoch: int, metrics: dict[str, Any], state: dict[str, Any], improved: bool = False,
         progress: dict[str, Any] | None = None) -> None:
    """last.pt (everything an exact resume needs), best.pt (weights + metadata only).
    ``epoch`` is the last finished epoch; ``progress`` the position inside the next one."""
    record = model_record(trainer, epoch, metrics)
    weights = trainer.ema.module.state_dict() if trainer.ema else state["model"]
    train_state = {
        "train_weights": state["model"], "ema_updates": trainer.ema.updates if trainer.ema else 0,
        "optimizer": state["optimizer"], "scaler": trainer.scaler.state_dict(),
        "schedule": trainer.schedule.state_dict(), "iteration": trainer.iteration,
        "best_fitness": trainer.best_fitness, "best_epoch": trainer.best_epoch,
        "history": trainer.log.history if trainer.log else [], "bad_steps_total": trainer.bad_steps_total,
        "epoch_progress": progress, "rng": state["rng"][0], "rng_per_rank": state["rng"],
        "dcp_dir": state["dcp_dir"],
    }
    save_checkpoint(training_checkpoint(record, weights, train_state), trainer.weights_dir / "last.pt")
    if state["dcp_dir"]:
        prune_dcp(trainer, keep=state["dcp_dir"])
    if improved:
        save_checkpoint(inference_checkpoint(record, weights), trainer.weights_dir / "best.pt")
    if progress is None and trainer.cfg.save_period and (epoch + 1) % trainer.cfg.save_period == 0:
        save_checkpoint(inference_checkpoint(record, weights), trainer.weights_dir / f"epoch{epoch + 1}.pt")


def restore(trainer, ckpt: dict[str, Any]) -> None:
    parallel.load_model_state_dict(trainer.model, ckpt["train_weights"])
    if trainer.ema:
        trainer.ema.module.load_state_dict(ckpt["model"])
        trainer.ema.updates = int(ckpt.get("ema_updates", 0))
    if ckpt["optimizer"] is None:  # parallel=fsdp: sharded state beside last.pt
        parallel.load_sharded(trainer.model, trainer.optimizer,
                              trainer.resume_from.parent / (ckpt.get("dcp_dir") or trainer.resume_from.stem + "_dcp"))
    else:
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.schedule.load_state_dict(ckpt["schedule"])
    trainer.start_epoch = int(ckpt["epoch"]) + 1
    trainer.iteration = int(ckpt["iteration"])
    trainer.best_fitness = float(ckpt["best_fitness"])
    trainer.best_epoch = int(ckpt.get("best_epoch", -1))
    trainer.history = list(ckpt.get("history", []))
    trainer.bad_steps_total = int(ckpt.get("bad_steps_total", 0))
    rng = own_rng(trainer, ckpt)
    set_rng_state(rng)
    trainer.resume_progress = ckpt.get("epoch_progress")
    if trainer.resume_progress:
        trainer.resume_progress["rng"] = rng
        LOG.info("resumed from %s in epoch %d at batch %d", trainer.resume_from, trainer.start_epoch + 1,
                 trainer.resume_progress["batch"])
    elif trainer.start_epoch >= trainer.cfg.epochs:
        LOG.info("%s: this run already finished its %d epochs; scoring best.pt again and rewriting "
                 "metrics.json and the plots (epochs=N resumes it for more)", trainer.resume_from, trainer.cfg.epochs)
    else:
        LOG.info("resumed from %s at epoch %d", trainer.resume_from, trainer.start_epoch + 1)


def own_rng(trainer, ckpt: dict[str, Any]) -> dict[str, Any]:
    per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    if len(per_rank) == trainer.dist.world_size:
        return per_rank[trainer.dist.rank]
    LOG.warning("resume: saved with %d processes, now %d: RNG streams restart from rank 0's "
                "(the run continues, but not bit-identically)", len(per_rank), trainer.dist.world_size)
    return per_rank[0]

