"""The training loop: AMP, accumulation, clipping, EMA, schedule, validation, early stop,
checkpoints and resume. One class, driven by one resolved configuration (detforge/engine/resolve.py)
that it only reads; it never names a model family.

Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch) and the data
pipeline seeds each sample from (seed, epoch, index), so a run resumed from last.pt replays
the interrupted epoch exactly as an uninterrupted run would have."""

from __future__ import annotations

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

from detforge.config import ConfigError, TrainConfig
from detforge.data.dataset import DetectionDataset
from detforge.data.formats import load_dataset
from detforge.data.loader import build_dataloader, loader_set_epoch, multi_scale_size, resize_batch
from detforge.engine import distributed as dist_utils
from detforge.engine import parallel, run_checkpoint
from detforge.engine.checkpoint import read_detforge_checkpoint, set_rng_state
from detforge.engine.ema import ModelEMA, ramp_for_run
from detforge.engine.optim import build_optimizer
from detforge.engine.run_log import RunLog
from detforge.data.check import describe_problems
from detforge.engine.run_report import PredictionSamples, store_class_thresholds, training_length_hint, write_plots
from detforge.engine.schedule import LRSchedule
from detforge.engine.precise_bn import recalibrate_batchnorm
from detforge.engine.sharding import build_eval_loader
from detforge.engine.validator import evaluate
from detforge.errors import NonFiniteLossError
from detforge.eval.curves import curve_figures, curve_from_rows
from detforge.eval.evaluator import fitness as fitness_of
from detforge.engine.resolve import ResolvedConfig, resolve_train_config
from detforge.engine.run_model import apply_data_defaults, build_run_model
from detforge.utils.runtime import (
    add_file_log,
    increment_path,
    memory_used,
    remove_log,
    seed_everything,
    select_device,
    setup_logging,
)

LOG = logging.getLogger("detforge")
TRUST_RATIO_EVERY = 50  # LARS/LAMB local-lr log interval when trust_ratio_every is not set


def group_losses(losses: dict[str, float], group=lambda name: name) -> dict[str, float]:
    """One column per kind of loss in metrics.csv and the progress bar: the family's
    ``loss_group`` names the column of each term (a DETR sums its per-layer terms)."""
    out: dict[str, float] = {}
    for k, v in losses.items():
        base = group(k)
        out[base] = out.get(base, 0.0) + v
    return out


def as_resolved(cfg: TrainConfig | ResolvedConfig | dict[str, Any]) -> ResolvedConfig:
    """A TrainConfig built elsewhere counts its explicitly set keys as the user's."""
    if isinstance(cfg, ResolvedConfig):
        return cfg
    if isinstance(cfg, TrainConfig):
        cfg = {k: getattr(cfg, k) for k in cfg.model_fields_set}
    return resolve_train_config(dict(cfg))


class Trainer:
    def __init__(self, cfg: TrainConfig | ResolvedConfig | dict[str, Any], model: torch.nn.Module | None = None) -> None:
        self.resolved = as_resolved(cfg)
        self.cfg = cfg = self.resolved.cfg
        self.resume_from = self.resolved.resume_from
        self.dist = dist_utils.env_info()
        setup_logging(cfg.verbose, self.dist.rank)
        self.device = select_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        dist_utils.init_process_group(self.dist, self.device.type == "cuda", timeout=cfg.dist_timeout)
        self.is_main = self.dist.is_main
        self._model_in = model
        self.best_fitness = -math.inf
        self.best_epoch = -1
        self.start_epoch = 0
        self.resume_progress: dict[str, Any] | None = None  # set when last.pt was written mid-epoch
        self._last_save = time.time()
        self.iteration = 0
        self.bad_steps_total = 0
        self.history: list[dict[str, Any]] = []
        self._file_log = None
        self.bn_loader = None  # precise_bn's images, built in setup
        self._prepared: dict[str, Any] = {}  # model options the family's prepare() chose from the data
        self._from_data: dict[str, Any] = {}  # config keys the family's data_defaults() set

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        train_samples, val_samples = self._load_data()  # validate inputs before making a run folder
        self.resolved, self._from_data = apply_data_defaults(self.resolved, train_samples, self._model_in is not None)
        self.cfg = cfg = self.resolved.cfg
        # read once: the model is rebuilt from its options, and the run state restored from it
        resumed = None if self.resume_from is None else read_detforge_checkpoint(self.resume_from, need="training")
        built = build_run_model(cfg, len(self.names), train_samples, self._model_in, resumed, warn=self.is_main)
        self.model, self.model_name, self.model_options, self._prepared = (built.model, built.name, built.options,
                                                                           built.prepared)
        self.save_dir = self._make_run_dir()
        self.weights_dir, self.plots_dir = self.save_dir / "weights", self.save_dir / "plots"
        self.model.to(self.device)
        masks = bool(getattr(self.model, "supports_masks", False))
        self.train_set = DetectionDataset(train_samples, cfg, train=True, cache=cfg.cache, masks=masks)
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
        self.bn_loader = self._precise_bn_loader(train_samples, per_rank * 2)
        # sized on every training image: with ignore_background_epochs the first epochs are
        # shorter, and the schedule must still span the whole run
        world = self.dist.world_size if self.dist.enabled else 1
        batches = math.ceil(math.ceil(len(self.train_set.samples) / world) / per_rank)
        self.iters_per_epoch = max(1, math.ceil(batches / cfg.accumulate))
        self.optimizer, _ = build_optimizer(
            self.model, cfg, dataset_size=len(self.train_set), iters_per_epoch=self.iters_per_epoch,
            world_size=self.dist.world_size, recipe=self.resolved.family_defaults, batch_size=per_rank,
            sources=self.resolved.sources,
        )
        self.schedule = LRSchedule(cfg, self.iters_per_epoch, cfg.epochs, warmup_every_cycle=cfg.warmup_every_cycle)
        self.ema = ModelEMA(self.model, decay=cfg.ema_decay, warmup=self._ema_ramp()) if cfg.ema else None
        self.amp_dtype = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.train_model = self._wrap_distributed(self.model)
        if resumed is not None:
            run_checkpoint.restore(self, resumed)
        self.log = RunLog(self.save_dir, cfg.logger, cfg.project, cfg.model_dump(mode="json"),
                          self.history) if self.is_main else None
        self.trust_logger = self._trust_logger()
        if self.is_main:
            (self.save_dir / "config.yaml").write_text(self.resolved.to_yaml())
            LOG.info(
                "detforge train: %s on %s | %d train / %d val images, %d classes | batch %d, %d epochs | %s",
                self.model_name, self.device, len(self.train_set), len(self.val_set),
                len(self.names), self.batch_size, cfg.epochs, self.save_dir,
            )

    def _precise_bn_loader(self, train_samples, batch_size: int):
        """With ``precise_bn``: a loader over up to that many training images, spread over the set and
        un-augmented (the validation transform); every rank reads the same images, so every rank's
        evaluated weights get the same statistics without a collective."""
        n = int(self.cfg.precise_bn)
        if n <= 0 or not train_samples:
            return None
        samples = list(train_samples)
        chosen = [samples[i * len(samples) // n] for i in range(n)] if n < len(samples) else samples
        if self.is_main:
            LOG.info("precise_bn: BatchNorm statistics re-measured on %d un-augmented training images before "
                     "each validation", len(chosen))
        dataset = DetectionDataset(chosen, self.cfg, train=False, cache=False)
        return build_eval_loader(dataset, batch_size, 0)

    def _ema_ramp(self) -> int:
        """cfg.ema_warmup, or with ``auto`` the ramp sized from this run's optimizer steps."""
        if self.cfg.ema_warmup != "auto":
            return self.cfg.ema_warmup
        steps = self.iters_per_epoch * self.cfg.epochs
        ramp = ramp_for_run(steps, self.cfg.ema_decay)
        if self.is_main:
            LOG.info("EMA ramp %d steps (ema_warmup=auto, %d steps in the run)", ramp, steps)
        return ramp

    def _load_data(self):
        cfg = self.cfg
        self.data = load_dataset(cfg.data)
        self.names = list(self.data.names)
        if cfg.num_classes and cfg.num_classes != len(self.names):
            raise ConfigError(
                f"num_classes={cfg.num_classes} but the dataset names {len(self.names)} classes ({self.names})"
            )
        message = describe_problems(self.data.problems, self.data.root, cfg.data)
        if message and self.is_main:
            LOG.warning(message)
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
        return train_samples, val_samples

    def _make_run_dir(self) -> Path:
        if self.resume_from is not None:
            path = self.resume_from.parent.parent
        else:
            base = Path(self.cfg.project) / (self.cfg.name or "train")
            path = increment_path(base, self.cfg.exist_ok) if self.is_main else base
            path = Path(dist_utils.broadcast_object(str(path)))
        if self.is_main:
            (path / "weights").mkdir(parents=True, exist_ok=True)
            (path / "plots").mkdir(parents=True, exist_ok=True)
            self._file_log = add_file_log(path / "train.log")
            # said on the console before the run folder existed; kept in its log too
            if self._from_data:
                LOG.info("training settings from the training data (%s): %s", self.cfg.model, self._from_data)
            if self._prepared:
                LOG.info("model settings from the training data (%s): %s", self.cfg.model, self._prepared)
        dist_utils.barrier()
        return path

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
        # ddp / zero1 / fsdp wrapping; the optimizer becomes ZeRO's or is rebuilt over FSDP's
        # sharded parameters. FSDP modules cannot evaluate uneven shards (their forward runs
        # collectives), so without EMA a plain copy evaluates the gathered weights.
        self.eval_copy = None
        if not self.dist.enabled:
            return model
        if self.cfg.parallel == "fsdp" and not self.ema:
            self.eval_copy = parallel.plain_copy(model)
        wrapped, self.optimizer = parallel.wrap(model, self.optimizer, self.cfg, self.device)
        return wrapped

    def _trust_logger(self):
        """LARS/LAMB: the per-layer local lr is the point of such recipes, so it is logged by
        default (every 50 steps; trust_ratio_every=0 turns it off)."""
        cfg = self.cfg
        every = cfg.trust_ratio_every if cfg.trust_ratio_every is not None else TRUST_RATIO_EVERY
        if not every or cfg.optimizer not in ("lars", "lamb"):
            return None
        from detforge.engine.trust_ratio import TrustRatioLogger

        # every rank computes (FSDP shards the norms), rank 0 writes
        return TrustRatioLogger(self.model, self.optimizer, every, self.save_dir / "trust_ratio.csv",
                                tb_writer=self.log.tb if self.log else None, write=self.is_main)

    def _plain_model(self) -> torch.nn.Module:
        """The model to evaluate: itself, or under FSDP a plain copy of its gathered weights."""
        if self.eval_copy is None:
            return self.model
        self.eval_copy.load_state_dict(parallel.model_state_dict(self.model, all_ranks=True))
        return self.eval_copy

    # ------------------------------------------------------------------ checkpoints
    def _gather_state(self) -> dict[str, Any]:
        return run_checkpoint.gather_state(self)

    def _save(self, epoch: int, metrics: dict[str, Any], state: dict[str, Any], improved: bool = False,
              progress: dict[str, Any] | None = None) -> None:
        run_checkpoint.save(self, epoch, metrics, state, improved, progress)

    def _maybe_checkpoint_mid_epoch(self, epoch: int, next_batch: int, sums: dict[str, float]) -> None:
        """A long epoch is hours of work: write last.pt inside it too (every ``checkpoint_every``
        steps or ``checkpoint_minutes``), so a resume continues from this batch."""
        cfg = self.cfg
        due = bool(cfg.checkpoint_every) and self.iteration % cfg.checkpoint_every == 0
        if cfg.checkpoint_minutes and time.time() - self._last_save >= 60 * cfg.checkpoint_minutes:
            due = True
        if not dist_utils.any_rank(due, self.device):
            return
        state = self._gather_state()
        if self.is_main:
            self._save(epoch - 1, {}, state, progress={"batch": next_batch, "sums": dict(sums)})
        self._last_save = time.time()

    # ------------------------------------------------------------------ loop
    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if self.trust_logger is not None:
            self.trust_logger.maybe_log(self.iteration)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(parallel.ema_source(self.model))
        self.iteration += 1
        self.schedule.step(self.optimizer, self.iteration)

    def _batch_inputs(self, images, targets, epoch: int, i: int):
        x = images.to(self.device, non_blocking=True).float().div_(255)
        tgts = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        if self.cfg.multi_scale > 0:
            rng = np.random.default_rng([self.cfg.seed, epoch, i])  # a function of the position: resumable
            size = multi_scale_size(self.cfg.imgsz, self.cfg.multi_scale, getattr(self.model, "stride", 32), rng)
            x, tgts = resize_batch(x, tgts, size)
        return x, tgts

    def _skip_bad_step(self, epoch: int, i: int, loss_dict: dict[str, torch.Tensor], in_row: int) -> None:
        self.bad_steps_total += 1
        LOG.warning("non-finite loss at epoch %d batch %d (%s): step skipped (%d in a row, %d in total)",
                    epoch + 1, i, {k: float(v.detach()) for k, v in loss_dict.items()}, in_row, self.bad_steps_total)
        self.optimizer.zero_grad(set_to_none=True)
        if in_row >= self.cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"{in_row} non-finite losses in a row (epoch {epoch + 1}, batch {i}): the run is "
                f"diverging. Lower lr0 (now {self.optimizer.param_groups[0]['lr']:.3g}), set clip_grad, "
                "try amp=false or amp_dtype=bfloat16, and run `detforge data check` for broken boxes."
            )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        seed = cfg.seed + 1000 * epoch + self.dist.rank  # per-epoch reseed: a resume replays it
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
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        group = getattr(self.model, "loss_group", lambda name: name)
        sums: dict[str, float] = dict(progress["sums"]) if progress else {}
        n_batches = start_batch + len(self.train_loader)  # the sampler skips what was done
        bad_in_row = micro = 0
        bar = tqdm(self.train_loader, total=n_batches, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (self.is_main and cfg.verbose), dynamic_ncols=True, leave=True)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, targets, _metas) in enumerate(bar, start=start_batch):
            if epoch == 0 and i < 3 and self.is_main and cfg.plots:
                from detforge.data.preview import save_batch_preview

                save_batch_preview(images, targets, self.names, self.plots_dir / f"train_batch{i}.png")
            x, tgts = self._batch_inputs(images, targets, epoch, i)
            last_micro = (micro + 1) % cfg.accumulate == 0 or i == n_batches - 1
            with parallel.gradient_sync(self.train_model, enabled=last_micro):
                with autocast:
                    loss_dict = self.train_model(x, tgts)
                loss = sum(loss_dict.values())
                finite = not dist_utils.any_rank(not bool(torch.isfinite(loss.detach()).item()), self.device)
                if finite:
                    self.scaler.scale(loss / cfg.accumulate).backward()
            if not finite:
                bad_in_row += 1
                micro = 0
                self._skip_bad_step(epoch, i, loss_dict, bad_in_row)
                continue
            bad_in_row = 0
            micro += 1
            logged = group_losses(dist_utils.reduce_loss_dict(loss_dict), group)
            logged["loss"] = sum(logged.values())
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            if last_micro:
                self._optimizer_step()
                micro = 0
                if i < n_batches - 1:
                    self._maybe_checkpoint_mid_epoch(epoch, i + 1, sums)
            if self.is_main and cfg.verbose:
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4g}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                mem=memory_used(), refresh=False)
        return {k: v / max(1, n_batches) for k, v in sums.items()}

    def validate(self) -> tuple[dict[str, Any], Any]:
        model = self.ema.module if self.ema else self._plain_model()
        if self.bn_loader is not None:
            recalibrate_batchnorm(model, (images for images, _t, _m in self.bn_loader), self.device, self.amp_dtype)
        metrics, evaluator, _ = evaluate(
            model, self.val_loader, self.names, self.cfg.conf, self.cfg.iou_thr, self.device,
            self.amp_dtype, self.cfg.max_det, show=self.is_main and self.cfg.verbose,
        )
        metrics["fitness"] = fitness_of(metrics, self.cfg.fitness)
        return metrics, evaluator

    def _log_epoch(self, epoch: int, losses: dict[str, float], metrics: dict[str, Any], seconds: float) -> None:
        self.log.write(self.log.epoch_row(epoch, losses, self.optimizer.param_groups[0]["lr"], metrics, seconds))
        if "map50_95" in metrics:
            LOG.info(
                "epoch %d/%d  loss %.4f  mAP50-95 %.4f  mAP50 %.4f  P %.3f  R %.3f  F1 %.3f  IoU %.3f  (%.1fs)",
                epoch + 1, self.cfg.epochs, losses.get("loss", float("nan")), metrics["map50_95"], metrics["map50"],
                metrics["precision"], metrics["recall"], metrics["f1"], metrics["iou"], seconds,
            )

    def train(self) -> dict[str, Any]:
        self.setup()
        cfg = self.cfg
        last_metrics: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.time()
                losses = self.train_epoch(epoch)
                metrics: dict[str, Any] = {}
                if (epoch + 1) % cfg.val_period == 0 or epoch == cfg.epochs - 1:
                    metrics, _ = self.validate()
                    last_metrics = metrics
                improved = bool(metrics) and metrics["fitness"] > self.best_fitness
                if improved:
                    self.best_fitness, self.best_epoch = metrics["fitness"], epoch
                state = self._gather_state()  # collective: every rank
                if self.is_main:
                    self._log_epoch(epoch, losses, metrics, time.time() - t0)
                    self._save(epoch, metrics, state, improved)
                self._last_save = time.time()  # on every rank: the mid-epoch decision is collective
                stop = bool(cfg.patience and metrics and epoch - self.best_epoch >= cfg.patience)
                if stop:
                    LOG.info("early stop: no fitness gain for %d epochs (best %.4f at epoch %d)",
                             cfg.patience, self.best_fitness, self.best_epoch + 1)
                if dist_utils.any_rank(stop, self.device):
                    break
            results = self.finish(last_metrics)
        finally:
            if self.log:
                self.log.close()
            remove_log(self._file_log)  # a second run in this process writes its own train.log only
            dist_utils.barrier()
        return results

    # ------------------------------------------------------------------ end of run
    def finish(self, last_metrics: dict[str, Any]) -> dict[str, Any]:
        """Score best.pt once more (its numbers go to metrics.json and the plots)."""
        best = self.weights_dir / "best.pt"
        dist_utils.barrier()
        if best.is_file():
            weights = read_detforge_checkpoint(best)["model"]
            parallel.load_model_state_dict(self.ema.module if self.ema else self.model, weights)
        metrics, evaluator = self.validate() if best.is_file() else (last_metrics, None)
        metrics["epoch"] = self.best_epoch + 1
        if self.is_main:
            out = {k: v for k, v in metrics.items() if k != "confusion"}
            out["confusion"] = metrics.get("confusion")
            out["bad_steps"] = self.bad_steps_total
            out["data_problems"] = self.data.problem_counts()
            curve = curve_from_rows(self.log.history)
            # exit epoch, last-5 swing and rise (detforge.eval.curves), as `bench stability` reports them
            out["curve"] = {k: round(v, 6) for k, v in curve_figures(curve).items()}
            if evaluator is not None and best.is_file():
                out["class_conf"] = store_class_thresholds(evaluator, best, self.names, self.cfg.conf)
            (self.save_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=float))
            if self.cfg.plots:
                # rank 0 alone: never the sharded FSDP module (its forward is a collective); the
                # eval copy already holds the best weights from the last validate()
                model = self.ema.module if self.ema else (self.eval_copy if self.eval_copy is not None else self.model)
                samples = PredictionSamples(model, self.val_loader, self.val_set, self.device, self.amp_dtype,
                                            self.cfg.max_det, self.cfg.conf)
                write_plots(self.save_dir, evaluator, self.train_set.samples, self.names, samples)
            self.log.finish([self.save_dir / "metrics.json", self.save_dir / "metrics.csv",
                             *sorted(self.plots_dir.glob("*.png")), best])
            LOG.info(
                "best epoch %d: mAP50-95 %.4f  mAP50 %.4f  P %.3f  R %.3f  F1 %.3f  IoU %.3f  -> %s",
                metrics["epoch"], metrics.get("map50_95", 0), metrics.get("map50", 0), metrics.get("precision", 0),
                metrics.get("recall", 0), metrics.get("f1", 0), metrics.get("iou", 0), self.save_dir,
            )
            hint = training_length_hint(curve, self.batch_size, self.cfg.accumulate, self.iters_per_epoch,
                                        self.cfg.epochs)
            if hint:
                LOG.info(hint)
        metrics["save_dir"] = str(self.save_dir)
        return metrics
