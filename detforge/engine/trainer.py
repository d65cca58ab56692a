"""The training loop: AMP, accumulation, clipping, EMA, schedule, validation, early stop,
checkpoints and resume. One class, driven by one TrainConfig.

Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch) and the data
pipeline seeds each sample from (seed, epoch, index), so a run resumed from last.pt replays
the interrupted epoch exactly as an uninterrupted run would have."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detforge.config import ConfigError, TrainConfig, config_to_yaml
from detforge.data.dataset import DetectionDataset
from detforge.data.formats import load_dataset
from detforge.data.loader import build_dataloader, loader_set_epoch, multi_scale_size, resize_batch
from detforge.engine import distributed as dist_utils
from detforge.engine import parallel
from detforge.engine.checkpoint import (
    FORMAT,
    build_with_weights,
    load_checkpoint,
    load_pretrained,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from detforge.engine.ema import ModelEMA
from detforge.engine.optim import apply_recipe, build_optimizer
from detforge.engine.schedule import LRSchedule
from detforge.engine.sharding import build_eval_loader
from detforge.engine.validator import evaluate
from detforge.errors import NonFiniteLossError
from detforge.eval.evaluator import fitness as fitness_of
from detforge.models.zoo import build_model
from detforge.utils.runtime import add_file_log, increment_path, memory_used, seed_everything, select_device, setup_logging

LOG = logging.getLogger("detforge")
METRIC_KEYS = ("map50_95", "map50", "map75", "precision", "recall", "f1", "iou")


def group_losses(losses: dict[str, float], group=lambda name: name) -> dict[str, float]:
    """One column per kind of loss in metrics.csv and the progress bar: the family's
    ``loss_group`` names the column of each term (a DETR sums its per-layer terms)."""
    out: dict[str, float] = {}
    for k, v in losses.items():
        base = group(k)
        out[base] = out.get(base, 0.0) + v
    return out




def resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is False or cfg.resume in ("false", "False", None):
        return None
    if cfg.resume is True or str(cfg.resume).lower() == "true":
        found = sorted(Path(cfg.project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"resume=true: no weights/last.pt under project={cfg.project}")
        return found[-1]
    path = Path(str(cfg.resume))
    if not path.is_file():
        raise ConfigError(f"resume={cfg.resume}: file not found")
    return path


class Trainer:
    def __init__(self, cfg: TrainConfig, model: torch.nn.Module | None = None) -> None:
        self.resume_from = resolve_resume(cfg)
        self.resume_ckpt: dict[str, Any] | None = None
        if self.resume_from is not None:
            self.resume_ckpt = load_checkpoint(self.resume_from)
            cfg = self._resume_config(cfg, self.resume_ckpt["config"])
        if cfg.recipe == "cooldet":
            cfg = apply_recipe(cfg, keep=frozenset(cfg.model_fields_set - {"recipe"}))
        self.cfg = cfg
        self.dist = dist_utils.env_info()
        setup_logging(cfg.verbose, self.dist.rank)
        self.device = select_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        if cfg.decoder_layers is not None:
            LOG.warning("decoder_layers=%d is for val/predict/export of a trained model; training and its "
                        "validation use every decoder layer", cfg.decoder_layers)
        dist_utils.init_process_group(self.dist, self.device.type == "cuda")
        self.is_main = self.dist.is_main
        self._model_in = model
        self.history: list[dict[str, Any]] = []
        self.best_fitness = -math.inf
        self.best_epoch = -1
        self.start_epoch = 0
        self.resume_progress: dict[str, Any] | None = None  # set when last.pt was written mid-epoch
        self._last_save = time.time()
        self.iteration = 0
        self.bad_steps_total = 0

    # ------------------------------------------------------------------ set-up
    RESUME_OVERRIDABLE = frozenset({"device", "workers", "resume", "epochs", "verbose", "plots", "logger",
                                    "checkpoint_every", "checkpoint_minutes"})

    def _resume_config(self, given: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
        """The saved run's config, with the few settings a resume may change (device, workers,
        a longer ``epochs``, logging); other keys given now are ignored, and said so."""
        known = {k: v for k, v in saved.items() if k in TrainConfig.model_fields}
        dropped = sorted(set(saved) - set(known))
        if dropped:
            LOG.warning("resume: the checkpoint's config has keys this version does not know, ignored: %s", dropped)
        asked = given.model_fields_set - {"resume"}
        ignored = sorted(k for k in asked - self.RESUME_OVERRIDABLE if getattr(given, k) != known.get(k))
        if ignored:
            LOG.warning("resume: continuing the saved run's settings; ignored %s (start a new run to change them)",
                        ", ".join(f"{k}={getattr(given, k)}" for k in ignored))
        keep = {k: getattr(given, k) for k in (asked & self.RESUME_OVERRIDABLE) | {"resume"}}
        try:
            return TrainConfig(**{**known, **keep})
        except ValueError as e:
            raise ConfigError(f"resume: the saved config no longer validates: {e}") from None

    def _run_dir(self) -> Path:
        if self.resume_from is not None:
            return self.resume_from.parent.parent
        base = Path(self.cfg.project) / (self.cfg.name or "train")
        path = increment_path(base, self.cfg.exist_ok) if self.is_main else base
        return Path(dist_utils.broadcast_object(str(path)))

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        self.save_dir = self._run_dir()
        self.weights_dir = self.save_dir / "weights"
        self.plots_dir = self.save_dir / "plots"
        if self.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            self.plots_dir.mkdir(parents=True, exist_ok=True)
            add_file_log(self.save_dir / "train.log")
        dist_utils.barrier()

        self.data = load_dataset(cfg.data)
        self.names = list(self.data.names)
        if cfg.num_classes and cfg.num_classes != len(self.names):
            raise ConfigError(
                f"num_classes={cfg.num_classes} but the dataset names {len(self.names)} classes ({self.names})"
            )
        counts = self.data.problem_counts()
        if counts:
            LOG.warning(
                "data: %d problems found while reading %s (%s); run `detforge data check data=%s` for the files",
                sum(counts.values()), self.data.root, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                cfg.data or "<built-in>",
            )
        train_samples = self.data.splits.get("train") or []
        val_samples = self.data.splits.get("val") or []
        if not val_samples and self.data.splits.get("test"):
            LOG.warning("%s has no val split: validating on the test split (best.pt is then chosen on test; "
                        "make a val split to keep test unseen)", self.data.root)
            val_samples = self.data.splits["test"]
        if not train_samples:
            raise ConfigError(f"{self.data.root}: the train split has no usable images")
        if not val_samples:
            raise ConfigError(f"{self.data.root}: no val (or test) split to validate on")

        self.model = self._build_model()
        recipe = self._model_recipe(cfg.epochs)
        cfg = self.cfg = self._apply_recipe_defaults(cfg, recipe)
        self.model.to(self.device)

        self.train_set = DetectionDataset(train_samples, cfg, train=True, cache=cfg.cache)
        self.val_set = DetectionDataset(val_samples, cfg, train=False, cache=cfg.cache)
        self.batch_size = self._resolve_batch()
        per_rank = max(1, self.batch_size // self.dist.world_size) if self.dist.enabled else self.batch_size
        self.train_loader = build_dataloader(
            self.train_set, per_rank, train=True, workers=cfg.workers, seed=cfg.seed,
            distributed=self.dist.enabled, rank=self.dist.rank, world_size=self.dist.world_size,
        )
        # distributed: each rank predicts its own unpadded shard (no duplicated images)
        self.val_loader = build_eval_loader(
            self.val_set, per_rank * 2, cfg.workers, rank=self.dist.rank, world_size=self.dist.world_size,
        )
        # sized on every training image: with ignore_background_epochs the first epochs are
        # shorter, and the schedule must still span the whole run
        world = self.dist.world_size if self.dist.enabled else 1
        batches = math.ceil(math.ceil(len(self.train_set.samples) / world) / per_rank)
        self.iters_per_epoch = max(1, math.ceil(batches / cfg.accumulate))
        cfg = self.cfg = self._fit_warmup(cfg)

        self.optimizer, opt_info = build_optimizer(
            self.model, cfg, dataset_size=len(self.train_set), iters_per_epoch=self.iters_per_epoch,
            world_size=self.dist.world_size, recipe=recipe, batch_size=per_rank,
        )
        self.schedule = LRSchedule(
            cfg, self.iters_per_epoch, cfg.epochs, step_per_epoch=cfg.step_per_epoch,
            warmup_every_cycle=cfg.warmup_every_cycle,
        )
        self.ema = ModelEMA(self.model, decay=cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema else None
        self.amp_dtype = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.train_model = self._wrap_distributed(self.model)
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.tb = self._tensorboard() if self.is_main else None
        self.trackers = []
        if self.is_main and set(cfg.logger) - {"tensorboard"}:
            from detforge.engine.loggers import start_trackers

            self.trackers = start_trackers(cfg.logger, Path(cfg.project).name, self.save_dir.name,
                                           cfg.model_dump(mode="json"))
        self.trust_logger = None
        if cfg.trust_ratio_every and cfg.optimizer in ("lars", "lamb"):
            from detforge.engine.trust_ratio import TrustRatioLogger

            # every rank computes (FSDP shards the norms), rank 0 writes
            self.trust_logger = TrustRatioLogger(
                self.model, self.optimizer, cfg.trust_ratio_every, self.save_dir / "trust_ratio.csv",
                tb_writer=self.tb, write=self.is_main,
            )
        if self.is_main:
            (self.save_dir / "config.yaml").write_text(config_to_yaml(cfg))
            LOG.info(
                "detforge train: %s on %s | %d train / %d val images, %d classes | batch %d, %d epochs | %s",
                getattr(self.model, "model_name", cfg.model), self.device, len(self.train_set), len(self.val_set),
                len(self.names), self.batch_size, cfg.epochs, self.save_dir,
            )

    # settings a family recipe may fill when the user left them alone; sizes of the run
    # (imgsz, batch, epochs) stay the user's: a COCO recipe's 640 px x 160 epochs is no default
    RECIPE_SKIP = frozenset({"imgsz", "batch", "epochs", "model", "data"})

    def _model_recipe(self, epochs: int) -> dict[str, Any]:
        """The family's defaults; recipes that scale with the run (e.g. D-FINE's no-augmentation
        tail) are given the epoch count."""
        fn = getattr(self.model, "recipe", None)
        if fn is None:
            return {}
        import inspect

        return fn(epochs=epochs) if "epochs" in inspect.signature(fn).parameters else fn()

    def _apply_recipe_defaults(self, cfg: TrainConfig, recipe: dict[str, Any]) -> TrainConfig:
        fill = {
            k: v for k, v in recipe.items()
            if k in TrainConfig.model_fields and k not in cfg.model_fields_set and k not in self.RECIPE_SKIP
        }
        if not fill:
            return cfg
        LOG.info("model recipe: %s", ", ".join(f"{k}={v}" for k, v in sorted(fill.items())))
        updated = TrainConfig(**{**cfg.model_dump(), **fill})
        # keep "what the user set" knowable for later layers (optimizer recipe, cooldet keeps)
        object.__setattr__(updated, "__pydantic_fields_set__", set(cfg.model_fields_set))
        return updated

    def _fit_warmup(self, cfg: TrainConfig) -> TrainConfig:
        """A warm-up sized for COCO (500 iterations, 3 epochs) can be longer than a whole run on a
        few hundred images: unless the user set it, cap it at 10% of the run's steps."""
        if {"warmup_iters", "warmup_epochs"} & cfg.model_fields_set:
            return cfg
        total = self.iters_per_epoch * cfg.epochs
        wanted = cfg.warmup_iters if cfg.warmup_iters is not None else round(cfg.warmup_epochs * self.iters_per_epoch)
        cap = max(1, round(0.1 * total))
        if wanted <= cap:
            return cfg
        LOG.info("warm-up: %d steps would be %.0f%% of this %d-step run; using %d (set warmup_iters to override)",
                 wanted, 100 * wanted / total, total, cap)
        updated = cfg.model_copy(update={"warmup_iters": cap})
        return updated

    def _model_options(self, name: str) -> dict[str, Any]:
        """The config's settings in the form the family's constructor takes."""
        from detforge.models.zoo import get_spec

        return get_spec(name).options(self.cfg)

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        if self._model_in is not None:
            return self._model_in
        num_classes = len(self.names)
        if cfg.model.endswith(".pt"):
            ckpt = load_checkpoint(cfg.model)
            if "model_name" not in ckpt:
                raise ConfigError(f"model={cfg.model} is not a detforge checkpoint; to start from other weights "
                                  "give a model name and pretrained=PATH (e.g. model=dfine-s pretrained=PATH)")
            model = build_model(ckpt["model_name"], num_classes, **self._model_options(ckpt["model_name"]))
            from detforge.engine.checkpoint import find_state_dict, load_matching

            load_matching(model, find_state_dict(ckpt), source=cfg.model)
            if cfg.pretrained:
                load_pretrained(model, cfg.pretrained)
            return model
        return build_with_weights(cfg.model, num_classes, cfg.pretrained, **self._model_options(cfg.model))

    def _resolve_batch(self) -> int:
        """The global batch. batch=-1 / 0.7 probe what fits one device (rank 0 probes, every
        rank uses its answer), so the global batch is that times the world size."""
        b = self.cfg.batch
        if b >= 1:
            return int(b)
        from detforge.engine.autobatch import auto_batch

        fraction = 0.6 if b == -1 else float(b)
        per_device = None
        if self.is_main:
            saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            per_device = auto_batch(self.model, self.cfg, self.device, fraction=fraction)
            self.model.load_state_dict(saved)  # the trial steps must not move BatchNorm statistics
        per_device = int(dist_utils.broadcast_object(per_device))
        return per_device * self.dist.world_size

    def _wrap_distributed(self, model: torch.nn.Module) -> torch.nn.Module:
        # distributed: ddp / zero1 / fsdp wrapping; the optimizer becomes ZeRO's or is rebuilt
        # over FSDP's sharded parameters. FSDP modules cannot evaluate uneven shards (their
        # forward runs collectives), so without EMA a plain copy evaluates the gathered weights.
        self.eval_copy = None
        if not self.dist.enabled:
            return model
        if self.cfg.parallel == "fsdp" and not self.ema:
            self.eval_copy = parallel.plain_copy(model)
        wrapped, self.optimizer = parallel.wrap(model, self.optimizer, self.cfg, self.device)
        return wrapped

    def _plain_model(self) -> torch.nn.Module:
        """The model to evaluate: itself, or under FSDP a plain copy of its gathered weights."""
        if self.eval_copy is None:
            return self.model
        self.eval_copy.load_state_dict(parallel.model_state_dict(self.model, all_ranks=True))
        return self.eval_copy

    def _dcp_dir(self) -> Path:
        """FSDP's sharded state goes to a new folder per save, named in last.pt, so a kill
        between the two writes leaves last.pt pointing at the complete older folder."""
        return self.weights_dir / f"last_dcp_{self.iteration}"

    def _prune_dcp(self, keep: str | None) -> None:
        import shutil

        for d in self.weights_dir.glob("last_dcp_*"):
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    def _gather_state(self, epoch_dir: Path) -> dict[str, Any]:
        """Model and optimizer state for checkpoints; every rank calls it (ZeRO consolidates on
        rank 0; FSDP gathers the weights on rank 0 and writes its sharded state to ``epoch_dir``)."""
        state = {
            "model": parallel.model_state_dict(self.train_model, all_ranks=False),
            "optimizer": parallel.optimizer_state_dict(self.train_model, self.optimizer),
        }
        if parallel.is_fsdp(self.train_model):
            parallel.save_sharded(self.train_model, self.optimizer, epoch_dir)
            state["dcp_dir"] = epoch_dir.name
        # each rank's RNG streams (dropout, denoising noise): a resume restores every rank's own
        state["rng"] = dist_utils.all_gather_object(rng_state())
        return state

    def _tensorboard(self):
        if "tensorboard" not in self.cfg.logger:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            LOG.warning("logger=tensorboard: tensorboard is not installed; skipping")
            return None
        return SummaryWriter(str(self.save_dir))

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, epoch: int, metrics: dict[str, Any], state: dict[str, Any],
                 progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """``epoch`` is the last finished epoch; ``progress`` the position inside the next one
        (batch, running loss sums) when written mid-epoch."""
        return {
            "epoch_progress": progress,
            "format": FORMAT,
            "model_name": getattr(self.model, "model_name", self.cfg.model),
            "num_classes": len(self.names),
            "names": self.names,
            "model": state["model"],
            "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": state["optimizer"],  # None under fsdp: see dcp_dir
            "dcp_dir": state.get("dcp_dir"),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": epoch,
            "iteration": self.iteration,
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "bad_steps_total": self.bad_steps_total,
            "metrics": {k: v for k, v in metrics.items() if k != "per_class" and not isinstance(v, list)},
            "config": self.cfg.model_dump(mode="json"),
            "imgsz": self.cfg.imgsz,
            "resize_mode": self.cfg.resize_mode,
            "conf": self.cfg.conf,
            "rng": state["rng"][0],
            "rng_per_rank": state["rng"],
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        parallel.load_model_state_dict(self.model, ckpt["model"])
        if self.ema and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.updates = int(ckpt.get("ema_updates", 0))
        if ckpt["optimizer"] is None:  # parallel=fsdp: sharded state beside last.pt
            parallel.load_sharded(self.model, self.optimizer,
                                  self.resume_from.parent / (ckpt.get("dcp_dir") or self.resume_from.stem + "_dcp"))
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.iteration = int(ckpt["iteration"])
        self.best_fitness = float(ckpt["best_fitness"])
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        self.history = list(ckpt.get("history", []))
        self.bad_steps_total = int(ckpt.get("bad_steps_total", 0))
        rng = self._own_rng(ckpt)
        set_rng_state(rng)
        self.resume_progress = ckpt.get("epoch_progress")
        if self.resume_progress:
            self.resume_progress["rng"] = rng
            LOG.info("resumed from %s in epoch %d at batch %d", self.resume_from, self.start_epoch + 1,
                     self.resume_progress["batch"])
        else:
            LOG.info("resumed from %s at epoch %d", self.resume_from, self.start_epoch + 1)

    def _own_rng(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == self.dist.world_size:
            return per_rank[self.dist.rank]
        LOG.warning("resume: saved with %d processes, now %d: RNG streams restart from rank 0's "
                    "(the run continues, but not bit-identically)", len(per_rank), self.dist.world_size)
        return per_rank[0]

    # ------------------------------------------------------------------ loop
    def _targets_to_device(self, targets):
        return [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        if self.trust_logger is not None:
            self.trust_logger.maybe_log(self.iteration)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(parallel.ema_source(self.model))
        self.iteration += 1
        self.schedule.step(self.optimizer, self.iteration)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        # per-epoch reseed: a resumed run replays this epoch exactly
        seed = cfg.seed + 1000 * epoch + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        progress, self.resume_progress = self.resume_progress, None
        start_batch = int(progress["batch"]) if progress else 0
        loader_set_epoch(self.train_loader, epoch, start_batch)
        self.train_model.train()
        self.schedule.step(self.optimizer, self.iteration)
        if progress:  # continue the RNG streams where the interrupted run was
            set_rng_state(progress["rng"])
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        sums: dict[str, float] = dict(progress["sums"]) if progress else {}
        n_batches = start_batch + len(self.train_loader)  # the sampler skips what was done
        bad_in_row = 0
        micro = 0
        bar = tqdm(
            self.train_loader, total=n_batches, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.is_main and cfg.verbose), dynamic_ncols=True, leave=True,
        )
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, targets, _metas) in enumerate(bar, start=start_batch):
            if epoch == self.start_epoch and i < 3 and self.is_main and cfg.plots and epoch == 0:
                from detforge.data.preview import save_batch_preview

                save_batch_preview(images, targets, self.names, self.plots_dir / f"train_batch{i}.png")
            x = images.to(self.device, non_blocking=True).float().div_(255)
            tgts = self._targets_to_device(targets)
            if cfg.multi_scale > 0:
                rng = np.random.default_rng([cfg.seed, epoch, i])  # a function of the position: resumable
                size = multi_scale_size(cfg.imgsz, cfg.multi_scale, getattr(self.model, "stride", 32), rng)
                x, tgts = resize_batch(x, tgts, size)
            last_micro = (micro + 1) % cfg.accumulate == 0 or i == n_batches - 1
            with parallel.gradient_sync(self.train_model, enabled=last_micro):
                with autocast:
                    loss_dict = self.train_model(x, tgts)
                loss = sum(loss_dict.values())
                finite = bool(torch.isfinite(loss.detach()).item())
                if dist_utils.any_rank(not finite, self.device):
                    finite = False
                if finite:
                    self.scaler.scale(loss / cfg.accumulate).backward()
            if not finite:
                bad_in_row += 1
                self.bad_steps_total += 1
                LOG.warning(
                    "non-finite loss at epoch %d batch %d (%s): step skipped (%d in a row, %d in total)",
                    epoch + 1, i, {k: float(v.detach()) for k, v in loss_dict.items()}, bad_in_row, self.bad_steps_total,
                )
                self.optimizer.zero_grad(set_to_none=True)
                micro = 0
                if bad_in_row >= cfg.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{bad_in_row} non-finite losses in a row (epoch {epoch + 1}, batch {i}): the run is "
                        f"diverging. Lower lr0 (now {self.optimizer.param_groups[0]['lr']:.3g}), set clip_grad, "
                        "try amp=false or amp_dtype=bfloat16, and run `detforge data check` for broken boxes."
                    )
                continue
            bad_in_row = 0
            micro += 1
            logged = group_losses(dist_utils.reduce_loss_dict(loss_dict), self.model.loss_group)
            logged["loss"] = sum(logged.values())
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            if last_micro:
                self._optimizer_step()
                micro = 0
                if i < n_batches - 1:
                    self._maybe_checkpoint_mid_epoch(epoch, i + 1, sums)
            if self.is_main and cfg.verbose:
                bar.set_postfix(
                    loss=f"{sums['loss'] / (i + 1):.4g}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    mem=memory_used(), refresh=False,
                )
        count = max(1, n_batches)
        return {k: v / count for k, v in sums.items()}

    def _maybe_checkpoint_mid_epoch(self, epoch: int, next_batch: int, sums: dict[str, float]) -> None:
        """A long epoch is hours of work: write last.pt inside it too (every ``checkpoint_every``
        steps or ``checkpoint_minutes``), so a resume continues from this batch."""
        cfg = self.cfg
        due = bool(cfg.checkpoint_every) and self.iteration % cfg.checkpoint_every == 0
        if cfg.checkpoint_minutes and time.time() - self._last_save >= 60 * cfg.checkpoint_minutes:
            due = True
        if not dist_utils.any_rank(due, self.device):
            return
        state = self._gather_state(self._dcp_dir())
        if self.is_main:
            progress = {"batch": next_batch, "sums": dict(sums)}
            save_checkpoint(self._payload(epoch - 1, {}, state, progress), self.weights_dir / "last.pt")
            if state.get("dcp_dir"):
                self._prune_dcp(keep=state["dcp_dir"])
        self._last_save = time.time()

    def validate(self) -> tuple[dict[str, Any], Any]:
        model = self.ema.module if self.ema else self._plain_model()
        metrics, evaluator, _ = evaluate(
            model, self.val_loader, self.names, self.cfg.conf, self.cfg.iou_thr, self.device,
            self.amp_dtype, self.cfg.max_det, show=self.is_main and self.cfg.verbose,
        )
        metrics["fitness"] = fitness_of(metrics, self.cfg.fitness)
        return metrics, evaluator

    def _log_epoch(self, epoch: int, losses: dict[str, float], metrics: dict[str, Any], seconds: float) -> None:
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({k: round(v, 6) for k, v in losses.items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        for k in METRIC_KEYS + ("fitness",):
            if k in metrics:
                row[k] = round(float(metrics[k]), 6)
        row["time"] = round(seconds, 2)
        self.history.append(row)
        path = self.save_dir / "metrics.csv"
        fields = list(dict.fromkeys(k for r in self.history for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.history)
        if self.tb:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    group = "train" if k.startswith("loss") else ("lr" if k == "lr" else "metrics")
                    self.tb.add_scalar(f"{group}/{k}", v, epoch + 1)
            self.tb.flush()
        if self.trackers:
            from detforge.engine.loggers import log_all

            log_all(self.trackers, row, epoch + 1)
        if "map50_95" in metrics:
            LOG.info(
                "epoch %d/%d  loss %.4f  mAP50-95 %.4f  mAP50 %.4f  P %.3f  R %.3f  F1 %.3f  IoU %.3f  (%.1fs)",
                epoch + 1, self.cfg.epochs, losses.get("loss", float("nan")), metrics["map50_95"], metrics["map50"],
                metrics["precision"], metrics["recall"], metrics["f1"], metrics["iou"], seconds,
            )

    def train(self) -> dict[str, Any]:
        self.setup()
        cfg = self.cfg
        stop = False
        last_metrics: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.time()
                losses = self.train_epoch(epoch)
                final = epoch == cfg.epochs - 1
                metrics: dict[str, Any] = {}
                if (epoch + 1) % cfg.val_period == 0 or final:
                    metrics, _ = self.validate()
                    last_metrics = metrics
                improved = bool(metrics) and metrics["fitness"] > self.best_fitness
                if improved:
                    self.best_fitness, self.best_epoch = metrics["fitness"], epoch
                state = self._gather_state(self._dcp_dir())  # collective: every rank
                if self.is_main:
                    self._log_epoch(epoch, losses, metrics, time.time() - t0)
                    payload = self._payload(epoch, metrics, state)
                    save_checkpoint(payload, self.weights_dir / "last.pt")
                    if state.get("dcp_dir"):
                        self._prune_dcp(keep=state["dcp_dir"])
                    if improved:
                        save_checkpoint(payload, self.weights_dir / "best.pt")
                    if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
                        save_checkpoint(payload, self.weights_dir / f"epoch{epoch + 1}.pt")
                self._last_save = time.time()  # on every rank: the mid-epoch decision is collective
                if cfg.patience and metrics and epoch - self.best_epoch >= cfg.patience:
                    LOG.info(
                        "early stop: no fitness gain for %d epochs (best %.4f at epoch %d)",
                        cfg.patience, self.best_fitness, self.best_epoch + 1,
                    )
                    stop = True
                if dist_utils.any_rank(stop, self.device):
                    break
            results = self.finish(last_metrics)
        finally:
            if self.tb:
                self.tb.close()
            dist_utils.barrier()
        return results

    # ------------------------------------------------------------------ end of run
    def finish(self, last_metrics: dict[str, Any]) -> dict[str, Any]:
        """Score best.pt once more (its numbers go to metrics.json and the plots)."""
        best = self.weights_dir / "best.pt"
        dist_utils.barrier()
        if best.is_file():
            ckpt = load_checkpoint(best)
            target = self.ema.module if self.ema else self.model
            parallel.load_model_state_dict(target, ckpt["ema"] if self.ema and ckpt.get("ema") is not None else ckpt["model"])
        metrics, evaluator = self.validate() if best.is_file() else (last_metrics, None)
        metrics["epoch"] = self.best_epoch + 1
        if self.is_main:
            out = {k: v for k, v in metrics.items() if k != "confusion"}
            out["confusion"] = metrics.get("confusion")
            out["bad_steps"] = self.bad_steps_total
            out["data_problems"] = self.data.problem_counts()
            if evaluator is not None and best.is_file():
                out["class_conf"] = self._store_class_thresholds(evaluator, best)
            (self.save_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=float))
            if self.cfg.plots:
                self._plots(evaluator)
            if self.trackers:
                from detforge.engine.loggers import finish_all

                finish_all(self.trackers, [self.save_dir / "metrics.json", self.save_dir / "metrics.csv",
                                           *sorted(self.plots_dir.glob("*.png")), best])
            LOG.info(
                "best epoch %d: mAP50-95 %.4f  mAP50 %.4f  P %.3f  R %.3f  F1 %.3f  IoU %.3f  -> %s",
                metrics["epoch"], metrics.get("map50_95", 0), metrics.get("map50", 0), metrics.get("precision", 0),
                metrics.get("recall", 0), metrics.get("f1", 0), metrics.get("iou", 0), self.save_dir,
            )
        metrics["save_dir"] = str(self.save_dir)
        return metrics

    def _store_class_thresholds(self, evaluator, best: Path) -> list[float]:
        """Per-class confidence thresholds for deployment: the confidence that maximises each
        class's F1 on the validation set (``conf`` where a class has no ground truth). Saved in
        best.pt as ``class_conf``; exports carry them. Chosen on val, so the F1 they reach
        there is optimistic: the reported metrics stay at the single ``conf``."""
        sweep = evaluator.curves()
        confs, f1, n_gt = np.asarray(sweep["confs"]), np.asarray(sweep["f1"]), np.asarray(sweep["n_gt"])
        chosen = []
        for c in range(len(self.names)):
            if n_gt[c] == 0 or not np.isfinite(f1[:, c]).any() or np.nanmax(f1[:, c]) <= 0:
                chosen.append(float(self.cfg.conf))
            else:
                chosen.append(round(float(confs[int(np.nanargmax(f1[:, c]))]), 3))
        ckpt = load_checkpoint(best)
        ckpt["class_conf"] = chosen
        save_checkpoint(ckpt, best)
        LOG.info("per-class confidence thresholds (best F1 on val): %s",
                 ", ".join(f"{n} {c:.2f}" for n, c in zip(self.names, chosen)))
        return chosen

    def _plots(self, evaluator) -> None:
        from detforge.eval import plots

        try:
            plots.plot_results(self.save_dir / "metrics.csv", self.plots_dir / "results.png")
            if (self.save_dir / "trust_ratio.csv").is_file():
                from detforge.engine.trust_ratio import plot_trust_ratios

                plot_trust_ratios(self.save_dir / "trust_ratio.csv", self.plots_dir / "trust_ratio.png")
            plots.plot_labels(self.train_set.samples, self.names, self.plots_dir / "labels.png")
            if evaluator is not None:
                evaluator.save_plots(self.plots_dir)
            self._prediction_samples()
        except Exception as e:  # plots must never cost the user a finished run
            LOG.warning("plotting failed: %s: %s", type(e).__name__, e)

    def _prediction_samples(self, n: int = 8) -> None:
        from detforge.data.image_io import read_image
        from detforge.engine.validator import predict_loader
        from detforge.eval import plots

        # rank 0 alone: never the sharded FSDP module (its forward is a collective); the eval
        # copy already holds the best weights from the last validate()
        model = self.ema.module if self.ema else (self.eval_copy if self.eval_copy is not None else self.model)
        images, gts, dets = [], [], []
        for meta, det in predict_loader(model, self.val_loader, self.device, self.amp_dtype, self.cfg.max_det, show=False):
            s = self.val_set.samples[int(meta["index"])]
            images.append(read_image(s.image_path))
            gts.append((s.boxes, s.labels))
            dets.append(det)
            if len(images) >= n:
                break
        plots.plot_predictions(images, gts, dets, self.names, self.plots_dir / "val_predictions.png", conf=self.cfg.conf)
