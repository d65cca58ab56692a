"""What a finished run leaves for people: per-class thresholds in best.pt, the plots, the
prediction samples and a hint when the run ended still climbing."""

from __future__ import annotations

import logging
from pathlib import Path

LOG = logging.getLogger("detforge")


def store_class_thresholds(evaluator, best: Path, names: list[str], conf: float) -> list[float]:
    """Per-class confidence thresholds for deployment, chosen on the validation set and saved in
    best.pt as ``class_conf`` (exports carry them). Chosen on val, so the F1 they reach there is
    optimistic: the reported metrics stay at the single ``conf``."""
    from detforge.engine.checkpoint import update_checkpoint
    from detforge.eval import threshold

    chosen = threshold.best_f1_thresholds(evaluator.curves(), names, conf)
    update_checkpoint(best, class_conf=chosen)
    LOG.info("per-class confidence thresholds (best F1 on val): %s",
             ", ".join(f"{n} {c:.2f}" for n, c in zip(names, chosen)))
    return chosen


def training_length_hint(curve: list[dict[str, float]], batch: int, accumulate: int, steps_per_epoch: int,
                         epochs: int) -> str | None:
    """A line for the end of a run whose validation curve (``detforge.eval.curves``) was still
    rising at its last epoch, with the run's optimizer steps and the two ways to more of them
    (``epochs``: the run's setting, which the suggestion doubles);
    None otherwise. On small sets the step count, not the epoch count, is what runs short
    (D-FINE-N on 160 images at batch 16: 250 steps in 25 epochs, and batch 8 ended higher in
    about the same CPU time; benchmarks/RESULTS.md, "twice the optimizer steps")."""
    from detforge.eval.curves import SWING_EPOCHS, curve_figures, still_climbing

    figures = curve_figures(curve)
    if not still_climbing(figures, len(curve)):
        return None
    # the same images in more optimizer steps: half the accumulation, else half the batch
    key, now = ("accumulate", accumulate) if accumulate > 1 else ("batch", batch)
    fewer = [f"{key}={now // 2} (the same images, {now / (now // 2):.2g}x the steps)"] if now >= 2 else []
    more = " or ".join([*fewer, f"epochs={2 * epochs}"])
    steps = steps_per_epoch * int(curve[-1]["epoch"])
    return (f"mAP50-95 was still climbing at the end: +{figures['last5_rise']:.3f} along a line over the last "
            f"{SWING_EPOCHS} validated epochs (they moved {figures['last5_swing']:.3f}), in {steps} optimizer "
            f"steps ({steps_per_epoch} an epoch). More training would likely pay: {more}.")


def write_plots(save_dir: Path, evaluator, train_samples, names: list[str], samples) -> None:
    """Every plot of the run; a failing plot is a warning, never a lost run. ``samples`` yields
    (image, (gt boxes, gt labels), detections) for the prediction grid."""
    from detforge.eval import plots

    plots_dir = save_dir / "plots"
    try:
        plots.plot_results(save_dir / "metrics.csv", plots_dir / "results.png")
        if (save_dir / "trust_ratio.csv").is_file():
            from detforge.engine.trust_ratio import plot_trust_ratios

            plot_trust_ratios(save_dir / "trust_ratio.csv", plots_dir / "trust_ratio.png")
        plots.plot_labels(train_samples, names, plots_dir / "labels.png")
        if evaluator is not None:
            evaluator.save_plots(plots_dir)
        images, gts, dets = [], [], []
        for image, gt, det in samples:
            images.append(image)
            gts.append(gt)
            dets.append(det)
        if images:
            conf = getattr(samples, "conf", None)
            plots.plot_predictions(images, gts, dets, names, plots_dir / "val_predictions.png",
                                   **({"conf": conf} if conf is not None else {}))
    except Exception as e:  # plots must never cost the user a finished run
        LOG.warning("plotting failed: %s: %s", type(e).__name__, e)


class PredictionSamples:
    """The first ``n`` validation images with their ground truth and predictions."""

    def __init__(self, model, loader, dataset, device, amp_dtype, max_det: int, conf: float, n: int = 8) -> None:
        self.args = (model, loader, dataset, device, amp_dtype, max_det)
        self.conf, self.n = conf, n

    def __iter__(self):
        from detforge.data.image_io import read_image
        from detforge.engine.validator import predict_loader

        model, loader, dataset, device, amp_dtype, max_det = self.args
        for k, (meta, det) in enumerate(predict_loader(model, loader, device, amp_dtype, max_det, show=False)):
            if k >= self.n:
                break
            s = dataset.samples[int(meta["index"])]
            yield read_image(s.image_path), (s.boxes, s.labels), det
