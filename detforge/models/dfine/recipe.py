"""detforge's default D-FINE recipe: the official one, changed where a few hundred images need it.

The official configs are tuned for COCO on 8 GPUs (118k images, batch 32-128, 72-220 epochs, 500
warm-up steps, ImageNet-pretrained backbones). On a custom set of a few hundred images trained
from scratch, the official code with its D-FINE-N custom recipe (2-core CPU, 2026-11-23) stayed
at ~0 mAP for 5 epochs and ended at 0.231 mAP50-95 / 0.492 mAP50 on BCCD val after 25 epochs at
416, below YOLO11n's 0.361 / 0.578 at the same budget. In a paired screen on BCCD (D-FINE-N from
scratch, 256 px, batch 8, 5 epochs, same pipeline and seed) this recipe left the ~0 plateau an
epoch earlier (epoch 2: 0.048 vs 0.011 mAP50-95) and ended at 0.154 / 0.403 against the official
recipe's 0.123 / 0.339 (benchmarks/RESULTS.md, "D-FINE on BCCD"; one seed, all changes at once,
so their separate effects are not measured). What changes, and why:

- Dense one-to-one supervision (DEIM, arXiv 2412.04234): mosaic 0.5 (1.0 on sparse sets, below)
  and MixUp 0.2 raise the objects per training image, so Hungarian matching hands out several
  times more positives per step without an extra decoder. Both stop for the last ~15% of the
  epochs (``close_mosaic``) so the model ends on images that look like the validation data.
- Matchability-aware loss (DEIM's MAL) instead of VFL: a low-IoU match keeps a real positive
  target (IoU**1.5 with weight 1), where VFL's target, and so its gradient, nearly vanishes;
  early in a short run nearly every match is low-IoU. Its scores aim at IoU**1.5, so they run
  lower than VFL's: early in training few pass a 0.5 threshold (BCCD screen, epoch 5: F1 0.0 at
  conf 0.5, 0.343 at conf 0.25, same mAP).
- MAL's exponent 1.0 instead of DEIM's 1.5 (from scratch): a poor match aims at its IoU rather
  than IoU**1.5 and a wrong class's score is pushed down with weight p rather than p**1.5, so
  the score that picks the encoder's proposals and ranks the queries learns faster. At 416 px,
  batch 16, 25 epochs from scratch, 3 seeds each (benchmarks/RESULTS.md, "MAL's exponent 1.0
  over three seeds"): BCCD 0.501 ± 0.007 / 0.787 mAP50-95 / mAP50 against 0.450 ± 0.028 / 0.690
  at 1.5; the 1-2-object synthetic set 0.105 ± 0.005 / 0.227 against 0.063 ± 0.012 / 0.147,
  every seed above every seed at 1.5; BCCD-WBC 0.769 ± 0.007 against 0.782 ± 0.010 (mAP50
  0.994 against 0.996), a little lower, with steadier last epochs. Official weights, trained
  under 1.5, keep it.
- Sparse objects: from scratch, when the training images average at most 2 labelled objects
  (``SPARSE_OBJECTS_PER_IMAGE``), twice the classification term's weight (``cls_weight`` 2.0),
  no lr warm-up (``warmup_epochs`` 0), mosaic on every image (``mosaic`` 1.0), no colour
  jitter (``hsv_h``, ``hsv_s``, ``hsv_v`` 0), the backbone at three times the lr
  (``backbone_lr_mult`` 3.0) and BatchNorm statistics re-measured on up to 256 un-augmented
  training images before each validation (``precise_bn`` 256; the last paragraphs below), and
  on small objects Copy-Blend on every image (``copy_blend`` 1.0), a fifth of the scale
  jitter (``scale`` 0.1), all but the backbone at 1.5 times the lr (``head_lr_mult`` 1.5; for
  N 1.2e-3 beside the backbone's 2.4e-3), and a quarter of the epochs without
  mosaic at the end (``close_mosaic`` 6 of 25; "real small sparse objects" below). The
  model family chooses them once the training split is read (``sparse_data_defaults``; a
  config layer just above these defaults, recorded in config.yaml); any of them set by the
  user wins. With one object per image a DETR gets about one positive query per image and
  step, and the class score, which also picks the encoder's proposals, is what learns slowest.
  At 416 px, batch 16, 25 epochs from scratch (benchmarks/RESULTS.md, "twice the
  classification weight over MAL's exponent 1.0" and "no lr warm-up"): the weight alone, 3
  seeds, BCCD-WBC (1.05 per image) 0.769 ± 0.004 / 0.999 mAP50-95 / mAP50 against 0.769 /
  0.994 at weight 1, the synthetic set
  (1.34 per image) 0.109 ± 0.013 / 0.244 against 0.105 / 0.227. Dropping the warm-up and mosaic
  on every image over it: the synthetic set (4 seeds) 0.107 ± 0.019 / 0.237 against 0.111 /
  0.240, epoch-8 mAP50 0.097 against 0.068, last-5 swing 0.011 against 0.016; BCCD-WBC (3
  seeds) 0.766 ± 0.005 / 1.000 against 0.769 / 0.999, epoch-8 mAP50 0.882 against 0.656: level
  at the end, sooner at the start. On BCCD (13.7 per image) the weight ended lower in every seed
  (0.487 ± 0.006 / 0.790 against 0.501 ± 0.007 / 0.787) and mosaic on every image cost seed 0
  0.019, so denser sets keep the rest of this recipe. Between 2 and 13 objects per image none
  of it is measured; official weights, trained at weight 1 with the official schedule, keep it.
- From scratch the backbone trains at the full lr (three times it on sparse sets, above): the
  official backbone multipliers (0.5 for N, down to 0.01 for X) protect ImageNet features, and a
  random backbone has none to protect. Starting from official weights keeps the official
  multiplier.
- Cosine decay to 10% instead of the official constant lr: a short run has no later epochs in
  which a constant-lr model settles; the decay does that settling inside the budget.
- Warm-up in epochs (2; none on sparse sets, above), not 500 steps: 500 steps exceed a whole
  25-epoch run at batch 16 on 200 images (325 steps); the trainer further caps any warm-up at
  10% of the run.
- EMA ramp sized to the run (``ema_warmup=auto``) instead of 1000 steps: the ramp is chosen so
  the final average spans ~15% of the run's steps (84 steps for a 325-step run). A fixed ramp
  fits one run length: 1000 never gets past a decay of ~0.3 in a 325-step run (it barely
  averages), and the 300 used before ends such a run at 0.66 (an average over ~3 steps) while
  in a 6500-step run it leaves the average weighted towards its first half. On BCCD-WBC (416
  px, batch 16, 25 epochs, 3 seeds, the same trained weights averaged both ways) auto ended at
  0.782 ± 0.010 / 0.996 mAP50-95 / mAP50 against 0.782 ± 0.006 / 0.996 with the 300-step ramp,
  its last 5 epochs moving 0.013 ± 0.002 against 0.038 ± 0.023, best = last in every seed; on
  BCCD (3 seeds) 0.450 ± 0.028 / 0.690 against 0.457 ± 0.028 / 0.703, lower in every seed by
  0.004-0.009: the cost of averaging a still-climbing model over ~4 epochs
  (benchmarks/RESULTS.md, "EMA ramp sized to the run").

Tried for sparse data (one or two objects per image) and left out of the recipe, both still
available as switches: ``o2m=k`` (a training-only query group matched one-to-many, H-DETR's
hybrid matching; the deploy graph is unchanged) and ``copy_blend=p`` (objects of other images
blended in, DEIMv2's Copy-Blend). In the one paired screen this machine allowed (BCCD-WBC,
192 px, batch 16, 10 epochs, seed 0; benchmarks/RESULTS.md, "D-FINE-N on sparse-object data")
the default recipe ended at 0.436 / 0.728 mAP50-95 / mAP50, ``o2m=6 o2m_queries=100`` lower
(0.365 / 0.535, ~30% more time per step) and ``copy_blend=0.5`` a little higher (0.470 / 0.771);
Ultralytics YOLO11n reached 0.612 / 0.987 there. One seed at a reduced budget is not evidence
either way, so neither is on by default.

On the 1-2-object synthetic set at the full budget (416 px, batch 16, 25 epochs, 3 seeds; same
section) this recipe ends at 0.083 ± 0.023 / 0.186 ± 0.032 mAP50-95 / mAP50 against YOLO11n's
0.013 / 0.045, but leaves the ~0 plateau late (epochs 12-16) and is still rising at the end.
There an 80-step EMA ramp (close to auto's 69 for its 250 steps; paired runs, same trained
weights) made best = last in every seed without moving the mean (0.083), and lagged the
still-rising model (swing 0.033 against 0.027).
On BCCD-WBC at that budget (one large object per image, 3 seeds) it ends at 0.766 ± 0.012 /
0.996 ± 0.001 against YOLO11n's 0.733 ± 0.010 / 0.999 ± 0.001 and leaves the plateau by epoch
4-8; its last 5 epochs still move by 0.042 ± 0.030 mAP50-95, so late-run stability on small
validation sets remains open.
Each candidate alone at that budget on the synthetic set (same section; seeds paired with the
default's): ``copy_blend=0.5`` ended at 0.099 ± 0.018 / 0.215 ± 0.018 (3 seeds), a lead in the
means but within seed noise (paired +0.017 ± 0.039 mAP50-95), and on BCCD-WBC (3 seeds) at
0.773 ± 0.017 against 0.766 ± 0.012 (paired +0.007 ± 0.025) with a larger late swing (0.065
against 0.042); ``o2m=6 o2m_queries=100`` also ended higher on average (0.100 ± 0.035, paired
+0.017 ± 0.033) but less stable (last-5 swing 0.035); the two together ended lower than either
(0.055 ± 0.011, 2 seeds, both below their pair); a minimum-lr tail (``lrf=0.01
lr_tail_epochs=5 close_mosaic=5``) flattened the last epochs (swing 0.008) by stopping the
climb and ended at 0.054 against 0.085 for the same seed; doubling lr0 ended at 0.021. None is
in the recipe: a change goes in once it holds over 3 seeds on both proxies and keeps the BCCD
lead. The official custom recipe itself, through the same pipeline, ended at 0.022 / 0.049 on
the synthetic set (seed 0), about a quarter of this recipe's 0.085 / 0.187 for that seed.
Also left out on the synthetic set (paired with the default's seeds; benchmarks/RESULTS.md,
"denoising settings, mosaic on every image, half the lr"): ``dn_queries=300`` (150 denoising
groups instead of 50 for two objects) ended at 0.085 ± 0.025 / 0.186 ± 0.062, paired +0.002 ±
0.031 over 3 seeds, for ~40% more time per epoch; ``dn_box_noise=0.4`` 0.022 lower (one seed);
``lr0=4e-4`` 0.013 lower (one seed). ``mosaic=1.0`` ended at 0.096 ± 0.023 / 0.200 ± 0.049
(3 seeds, paired +0.034, -0.033, +0.038; epoch 8 at 0.058 against 0.043), the best mean of any
single change here but within seed noise; on BCCD-WBC (3 seeds) it ended at 0.777 ± 0.018 /
0.992 against 0.782 ± 0.010 / 0.996 (paired +0.018, -0.001, -0.030) with twice the late swing
(0.027 against 0.013), so the recipe keeps 0.5 ("BCCD-WBC and BCCD: mosaic on every image").
None left the plateau by epoch 8 in every seed. Nor did
two later switches (same budget, 3 seeds each, paired; "dense encoder supervision and a plain
first stage"): ``enc_o2m=6`` (every encoder cell matched one-to-many, 6 per object) ended at
0.074 ± 0.013 / 0.144, paired -0.014, -0.017, +0.003, mean mAP50 at epoch 8 0.033 against the
default's 0.043; ``open_mosaic=4`` (DEIM's plain first stage: mosaic and MixUp from epoch 5)
ended at 0.068 ± 0.021 / 0.157, paired -0.041, -0.023, +0.020, epoch 8 at 0.023.
The pairings of the last two paragraphs' later arms (dn_*, mosaic, lr0, enc_o2m, open_mosaic)
were with default runs from another machine, where the same seed trains a different model.
Re-run on the arms' machine ("the default recipe re-run beside its arms"), the default ends at
0.063 ± 0.012 / 0.147 ± 0.015 with this recipe's EMA (last-5 swing 0.013, best - last 0.005,
epoch-8 mAP50 0.035); ``mosaic=1.0`` is above it in every seed (+0.058, +0.017, +0.031) but lower
on BCCD-WBC, ``dn_queries=300`` above in one seed of three, ``enc_o2m=6`` and ``open_mosaic=4``
level. Per-epoch class-agnostic scores of those runs place the slow start in finding the
objects (28 % found at IoU 0.5 by epoch 8), and the low end in naming them (the right class
for about a third of the found objects, near chance for four classes).
Classification-side switches, scored the same way ("the classification term's weight and
MAL's exponent"): ``cls_weight=2`` ended at 0.096 ± 0.037 / 0.184 on the synthetic set (paired
+0.085, +0.018, -0.005; epoch-8 mAP50 0.069 against 0.035), mostly by finding objects sooner
(class-agnostic mAP50 at epoch 8: 0.141 against 0.081; right class at the end 0.44 against
0.35); on BCCD-WBC it ended lower in both seeds run (0.771 against 0.782, paired -0.006,
-0.011), so the classification weight stays 1. ``mal_gamma=1.0``, taken to three seeds on both
proxies and BCCD, is now the recipe's (the list above); VFL (``mal=false``) ended at 0.096 on
seed 0 and 0.038 on seed 1 of the synthetic set and was dropped.
Over exponent 1.0, BCCD-WBC's remaining mAP50 gap to YOLO11n (0.994 against 0.999) is second
boxes on already-found cells, which NMS removes after a CNN detector ("where mAP50 is lost").
``dup_weight=4`` (four times the push-down on such duplicates, training only) did not close it
(3 seeds, paired: 0.995 ± 0.005 mAP50, +0.003, -0.001, +0.001; mAP50-95 0.768 against 0.769;
last-5 swing 0.018 against 0.008; "a heavier push-down on duplicates"), so it stays off.
``mosaic=1.0`` over exponent 1.0, which steadied the synthetic set's end (swing 0.014 against
0.028), ended lower on BCCD-WBC (0.760 ± 0.008 against 0.769, paired -0.013, -0.021, +0.008;
swing 0.017 against 0.008) and on BCCD seed 0 (0.474 against 0.493), so mosaic alone stays 0.5
("mosaic on every image over MAL's exponent 1.0").
Over exponent 1.0, ``cls_weight=2`` held on both sparse proxies and cost BCCD about 0.013
mAP50-95 in every seed, hence the sparse-only setting in the list above. ``cls_weight=4`` on the
synthetic set (3 seeds) neither started sooner (epoch-8 mAP50 0.070 against 0.074) nor ended
higher (0.112 ± 0.025 / 0.224 against 0.109 / 0.244).
No lr warm-up (``warmup_epochs=0``) moved the synthetic set's curve about two epochs earlier
(4 GPU seeds: mean mAP50 at epoch 10 0.127 against 0.070) but not epoch 8 (0.080 against 0.074
over 3 CPU seeds), ended level (0.119 / 0.242 over 2 seeds; BCCD-WBC 0.766 against 0.769 over
2) with a larger last-5 swing (0.026 against 0.017), so alone it was not adopted
("no lr warm-up"). ``class_ce=1`` and ``=2`` (a softmax cross-entropy over the matched
queries' classes) started later on one seed (epoch-8 mAP50 0.015 and 0.010 against 0.041).
No warm-up with ``mosaic=1.0`` held on both sparse proxies and is now part of the sparse
settings (the list above). A one-to-many group for the first epochs only was not tried: ``o2m``
over the whole run did not start sooner (epoch-8 mAP50 0.042 against 0.041), and its first
epochs are the same training.
Where the synthetic set's start is still late ("where the start is lost"): by epoch 8 four
fifths of its objects have a box at IoU 0.5, most among their image's top 10, but the found
ones get the right one of the four shapes at about chance. ``dup_weight=0`` (no push-down on
boxes duplicating an object early) and ``dn_label_noise=1.0`` (more denoising labels to correct
from the image) each left epoch 8 lower on two seeds and the naming at chance, so neither is
in the recipe. The same images as one class (5 seeds) end at 0.262 ± 0.012 / 0.548 mAP50-95 /
mAP50 against YOLO11n's 0.059 / 0.159 (3 seeds), leaving the start by epoch 8 in three seeds of
five (exits at epochs 8, 12, 8, 9, 6).
Two later switches, both left out (benchmarks/RESULTS.md, "Adam's second-moment window" and "a
per-cell class head on the encoder"): ``beta2=0.99`` (AdamW averages the gradient scale over
~100 steps instead of ~1000, four times this run) on the one-class set (4 seeds) reached epoch 8
higher (mAP50 0.278 against 0.243) but ended lower in every seed (0.246 ± 0.019 against 0.263 ±
0.014 mAP50-95); ``dense_cls=1`` (a training-only FCOS-style class head on every encoder cell in
an object's middle) on the four-class set (4 seeds) ended level (0.114 ± 0.023 against 0.111 ±
0.027) with epoch 8 level (0.101 against 0.097), the naming still near chance; on the one-class set (2
seeds) it started sooner but ended lower in both (0.222 against 0.263).
Uncut labels (``min_box_visibility=0.5``: a box the mosaic cuts to under half its area loses its
label; benchmarks/RESULTS.md, "a faster backbone, whole objects in the mosaic, uncut labels")
started the four-class set sooner and ended it higher on average (3 seeds: epoch-8 mAP50 0.116
against 0.100, 0.129 ± 0.034 against 0.113 ± 0.022 mAP50-95) but spread wider, and on BCCD-WBC,
where the cut-off half of a large cell stays in the picture as background, it started later and
ended lower (3 seeds: epoch-8 mAP50 0.782 against 0.882, 0.760 ± 0.004 / 0.997 against 0.766 /
1.000), so the visibility threshold stays 0.1.
Less scale jitter (``scale=0.25`` against 0.5; same file, "less scale jitter") put the two
slowest seeds of the four-class set ahead at epoch 8 (mAP50 0.111 against 0.080) but the other
two behind (0.067 and 0.086 against 0.113 and 0.114), level over four (0.094 against 0.097), so
the jitter stays 0.5.
Screened to epoch 9 on the four-class set and left out (same file, "Adam's window, no denoising,
MAL's exponent 0.5"): ``beta2=0.995`` (epoch-8 mAP50 0.089 against 0.097 over four seeds),
``dn_queries=0`` and ``mal_gamma=0.5`` (both later than the default on its two slowest seeds:
0.066 and 0.039 against 0.080), ``mixup=0`` (level at epoch 8, 0.096).
No colour jitter (``hsv_h=0 hsv_s=0 hsv_v=0``) is a sparse setting since it held on all three
sparse proxies at the full budget (benchmarks/RESULTS.md, "no colour jitter at the full
budget"): the four-class synthetic set (5 seeds) ended level (0.116 ± 0.022 / 0.224 against
0.113 ± 0.022 / 0.243) and left its start sooner (exits 8, 9, 7, 8, 11 against 11, 9, 8, 9, 11);
the one-class set (5 seeds) ended higher (0.284 ± 0.019 / 0.547 against 0.262 / 0.548; paired
+0.067, +0.023, -0.012, +0.013, +0.022; exits 6, 9, 9, 8, 8 against 8, 12, 8, 9, 6); BCCD-WBC (3
seeds) ended higher in every seed (0.782 ± 0.007 / 0.997 against 0.766 ± 0.005 / 1.000; paired
+0.006, +0.013, +0.029) with the same start (exits 3, 4, 4). With one object per image a DETR's
class score learns from about one query per image and step; jitter that varies the contrast at
the outline the class is read from slows that more than its robustness repays in a 25-epoch run.
Dense sets keep the jitter (not measured on BCCD). Over it, ``mixup=0`` was screened to epoch 9
(5 seeds) and left out: epoch-8 mAP50 0.090 against 0.126.
Also screened over the sparse settings to epoch 9 (four-class set, 5 seeds;
benchmarks/RESULTS.md, "a higher lr, more MixUp, Copy-Blend") and left out: ``lr0=1.2e-3``
(epoch-8 mAP50 0.126, level), ``mixup=0.5`` (0.094 against 0.108 over four seeds) and
``copy_blend=0.5`` (0.098).
Denoising queries without their labels (``dn_label_drop=1.0``: each starts from the embedding's
empty row, so the class it is scored on must be read from the image instead of copied from the
label it carries; benchmarks/RESULTS.md, "denoising queries without their labels"), four-class
set, 5 seeds, scored on 400 extra validation images: epoch-8 mAP50 0.085 ± 0.013 against 0.070 ±
0.009, yet no seed past half its final, and the end level to lower (0.213 ± 0.014 / 0.105
mAP50 / mAP50-95 against 0.226 ± 0.024 / 0.112; on the 40 validation images it read higher,
0.242 against 0.224). Three times the denoising budget over it (``dn_queries=300``) reached
epoch 8 lower than it in both seeds run (0.070 and 0.080 against 0.077 and 0.088). It stays a
switch.
The from-scratch backbone at three times the lr (``backbone_lr_mult=3``, 2.4e-3 for N) is a
sparse setting (benchmarks/RESULTS.md, "the from-scratch backbone at a higher lr" and "the
backbone at three times the lr over three seeds"). Over seeds 0-2, paired with the settings
before it and scored on 400 extra images: four classes 0.187 ± 0.007 / 0.331 mAP50-95 / mAP50
against 0.107 ± 0.015 / 0.215, one class 0.334 ± 0.017 / 0.664 against 0.271 ± 0.020 / 0.575,
higher in every seed; BCCD-WBC 0.777 ± 0.008 / 0.999 against 0.782 ± 0.007 / 0.997 (paired
-0.006, -0.006, -0.004), every seed past half its final by epoch 3. The settings before it had
stalled near 0.19 mAP50 on four classes from epoch 13 (a likely reason, not measured: the
shapes are told apart by backbone features, and a fixed AdamW step turns growing random weights
ever more slowly, while the official 8e-4 was set over a pretrained backbone). It does not
start the synthetic sets sooner: epoch-8 mAP50 0.089 against 0.070 (four classes) and 0.237
against 0.265 (one class) while the end rises, so epoch 8 reaches a smaller share of the final
(0.27 and 0.36 against 0.33 and 0.46), and the last epochs still climb (last-5 swing 0.040 and
0.048 on 40 images). Seeds 3 and 4 through the default itself kept the four-class picture
(five seeds: 0.184 ± 0.017 / 0.325 against 0.113 ± 0.013 / 0.226, every seed higher; epoch 8
0.083 against 0.070), and the one-class picture (five seeds: 0.332 ± 0.014 / 0.657 against
0.272 ± 0.014 / 0.569, every seed higher; epoch 8 0.245 against 0.274). Five times (4e-3) reached 0.069 at epoch 8 on four classes' seed 1
against 0.123 at three times.
BatchNorm statistics re-measured before each validation (``precise_bn=256``) is a sparse
setting (benchmarks/RESULTS.md, "BatchNorm statistics re-measured before each validation").
With mosaic on every image and the backbone at 2.4e-3, the running averages a BatchNorm layer
keeps for inference trail the weights, and early validations read sound models as ~0: BCCD-WBC
seed 0 scored 0.002 mAP50-95 at epoch 4 as saved and 0.508 with the same weights' statistics
re-measured (seed 2's epoch 7: 0.006 and 0.481). The training is unchanged, so the existing
runs were re-scored: epoch-8 mAP50 on 400 extra images 0.112 ± 0.010 against 0.083 ± 0.024
(four classes, 5 seeds, every seed higher) and 0.314 ± 0.028 against 0.245 ± 0.066 (one class,
5 seeds; two seeds past half their final, none before); the end 0.181 / 0.324 against 0.184 /
0.325 and 0.327 / 0.650 against 0.332 / 0.657 mAP50-95 / mAP50 (a little lower in most seeds:
those runs end with four plain epochs whose statistics already fit), BCCD-WBC 0.784 ± 0.008
against 0.777 ± 0.008 (3 seeds, every seed higher).
On real small sparse objects (BCCD's platelets alone: 1.8 per image, ~26 px at 416;
benchmarks/RESULTS.md, "BCCD-Platelets") these settings start at epochs 2-4 of 25 (the recipe
for dense sets: epoch 8, level at the end; YOLO11n: epochs 16-17), but end behind YOLO11n over
3 seeds: 0.394 ± 0.024 / 0.832 against 0.427 ± 0.026 / 0.859 mAP50-95 / mAP50, the loss in box
fit (AP 0.03-0.09 lower at IoU 0.55-0.70, level from 0.80), with one seed's last 5 epochs
moving 0.041. Copy-Blend on half the images (``copy_blend`` 0.5) over them, 3 seeds paired:
0.398 ± 0.005 / 0.858 ± 0.026 (mAP50-95 +0.024, +0.002, -0.016; mAP50 +0.050, +0.035,
-0.007), every seed's last 5 epochs within 0.020 (0.011 / 0.015 / 0.020 against 0.017 / 0.013
/ 0.041), best = last, exits 2, 3, 2: level on mAP50-95, mAP50 up to YOLO11n's, the seeds and
the last epochs evened out; the gain is at IoU 0.50-0.55 (0.858 / 0.821 against 0.832 / 0.801),
the box fit from 0.60 up unchanged. On the large-object proxies Copy-Blend was level within
seed noise, with a larger late swing on BCCD-WBC (above), so it is a sparse setting only where
the objects are small: median side under a tenth of the image's long side
(``SMALL_OBJECT_SIDE``; the platelets 0.06, the white cells 0.30, the synthetic shapes 0.22).
Half the scale jitter (``scale=0.25``: each image or mosaic drawn at 0.75-1.25 of the training
scale instead of 0.5-1.5) over them, 3 seeds paired ("BCCD-Platelets"): 0.424 ± 0.013 / 0.881
± 0.021 against 0.398 ± 0.005 / 0.858 (mAP50-95 +0.024, +0.045, +0.011; mAP50 -0.013, +0.057,
+0.026), the gain at IoU 0.55-0.75, where the boxes had been loose. At 0.5 jitter a 26 px
platelet trains at 13-39 px, a quarter of the time under 20 px (about one cell of D-FINE-N's
finest, stride-16 map); at 0.25 it stays at 20-33 px, near the sizes it is validated at. Its
last 5 epochs still climb (swing 0.035 ± 0.006: a rise of 0.036 along a fitted line, 0.010 of
scatter around it; best = last in every seed). A fifth of the jitter (``scale=0.1``, 0.9-1.1;
23-29 px), 3 seeds paired with 0.25: 0.433 ± 0.006 / 0.896 ± 0.006 (mAP50-95 +0.007, -0.004,
+0.024; mAP50 +0.028, -0.013, +0.028), AP at IoU 0.50-0.60 higher again (0.896 / 0.886 /
0.867), last 5 epochs within 0.024 ± 0.011, best - last 0.004: the small-object setting beside
Copy-Blend. Those runs still climbed at the end (0.019 along a fitted line over the last 5
epochs), so the rest of the model now trains at 1.5 times the size's lr0
(``SMALL_SPARSE_LR_MULT`` as ``head_lr_mult``; 1.2e-3 for N) with the backbone's kept at three
times lr0 (measured as ``lr0=1.2e-3 backbone_lr_mult=2``, the same lrs), 3 seeds paired with
``scale=0.1``: 0.449 ± 0.011 / 0.898 ± 0.019
against 0.433 ± 0.006 / 0.896 (mAP50-95 +0.031, +0.003, +0.015; mAP50 +0.015, +0.002, -0.010),
AP up at IoU 0.65-0.80 (0.747 / 0.548 / 0.352 / 0.148 against 0.728 / 0.508 / 0.321 / 0.091),
best = last in every seed, but the last 5 epochs climb further (swing 0.039 ± 0.017 against
0.024: a rise of 0.037 along a fitted line); twice the lr for all but the backbone
(``lr0=1.6e-3 backbone_lr_mult=1.5``) ended seed 0 at 0.450 / 0.909, below 1.5 times (0.457).
No scale jitter (``scale=0``) ended seed 0 at 0.449 / 0.913 (+0.023) over 0.1, but over the
higher lr, 3 seeds, 0.441 ± 0.016 / 0.896 ± 0.026 (paired with the higher lr alone +0.003,
-0.006, -0.020), so the jitter stays 0.1.
Those runs gained in every epoch of the four without mosaic, so on small sparse objects the
tail is a quarter of the epochs (``SMALL_SPARSE_NO_AUG_FRACTION``; ``close_mosaic`` 6 of 25
instead of 4), 4 seeds paired (the same training up to epoch 19): 0.451 ± 0.017 / 0.898 ± 0.016
against 0.447 ± 0.010 / 0.896 ± 0.016 (mAP50-95 +0.017, +0.007, -0.002, -0.006), level within
seed noise, while the last 5 epochs move less in every seed (swing 0.019 ± 0.014 against 0.035
± 0.015; per seed 0.036 / 0.004 / 0.023 / 0.012 against 0.047 / 0.019 / 0.050 / 0.026), the
box fit unchanged (AP at IoU 0.50-0.80 within 0.012). ``close_mosaic=8`` was level with 6
over seeds 0-2 (0.455 ± 0.013 against 0.456 ± 0.016; swing 0.018 against 0.021).
Five seeds a side, these settings against YOLO11n: 0.452 ± 0.015 / 0.899 ± 0.014 against
0.418 ± 0.032 / 0.849 ± 0.031 mAP50-95 / mAP50 (+0.034), last 5 epochs within 0.016 ± 0.013,
two seeds of five above 0.02. Copy-Blend on every image instead of half (``copy_blend`` 1.0),
5 seeds paired: 0.454 ± 0.010 / 0.910 ± 0.015 (mAP50-95 -0.009, +0.010, -0.013, +0.024,
+0.002; mAP50 +0.018, -0.008, +0.025, +0.015, +0.002), AP at IoU 0.50-0.80 level or higher
(0.910 / 0.901 / 0.877 / 0.768 / 0.543 / 0.358 / 0.155 against 0.899 / 0.899 / 0.876 / 0.764
/ 0.549 / 0.352 / 0.142), and every seed's last 5 epochs within 0.02 (0.013 ± 0.006 against
0.016 ± 0.013): the setting now, +0.036 / +0.061 over YOLO11n.
On the synthetic shapes (~80 px) half the jitter was level ("less scale jitter", above).
Also tried there and left out: ``mixup=0`` ended level over 3 seeds (0.399 ± 0.017 / 0.816;
seed 0 +0.044, seed 2 -0.037), ``cls_weight=1`` level over 3 seeds
(0.389 ± 0.002 / 0.841; paired +0.019, -0.005, -0.029), ``close_mosaic=10`` lower on seed 0
(0.359 against 0.372) and ``dn_queries=300`` higher on seed 0 (0.393 / 0.896) with its AP up
at IoU 0.50-0.60 and down from 0.65: more objects found, not tighter boxes; one seed.
Over Copy-Blend, multi-scale batches (``multi_scale=0.25``, 312-520 px) ended seed 0 lower
(0.370 / 0.826 against 0.396 / 0.887).
Kept from the official recipe: AdamW, lr 8e-4 (N) .. 2.5e-4 (L, X), weight decay 1e-4 / 1.25e-4
with none on norms and biases, gradient-norm clip 0.1, EMA decay 0.9999, AMP on GPU, horizontal
flips, the per-size multi-scale setting. From scratch the clip acts on every step (gradient
norms 36-100 in the first nine epochs on the sparse set), so AdamW sees gradients of one size.
Run sizes (imgsz, batch, epochs) stay the user's. The measurements behind the choices are in
benchmarks/RESULTS.md, "D-FINE on BCCD".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from detforge.models.dfine.sizes import official_recipe

# share of the epochs at the end of a run without mosaic / MixUp
NO_AUG_FRACTION = 0.15
# the epoch count assumed when the caller does not say (TrainConfig's default)
DEFAULT_EPOCHS = 100


# sparse-object training sets (one-to-one matching has about one positive query per image):
# at most this many labelled objects per training image on average, background images included
SPARSE_OBJECTS_PER_IMAGE = 2.0
# the classification term's weight from scratch on such sets (module text: "Sparse objects")
SPARSE_CLS_WEIGHT = 2.0
# ... and the trainer settings that start such sets sooner and end them higher (module text,
# "Sparse objects"): no lr warm-up, mosaic on every image, no colour jitter, the random backbone
# at three times the lr, and BatchNorm statistics re-measured on un-augmented training images
# before each validation (the training itself unchanged)
SPARSE_TRAINING = {"warmup_epochs": 0.0, "mosaic": 1.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                   "backbone_lr_mult": 3.0, "precise_bn": 256}
# small objects among them: median object side (square root of the box area) under this share
# of the image's long side (BCCD's platelets 0.06; its white cells 0.30, the synthetic shapes
# 0.22, BCCD in full 0.16) ...
SMALL_OBJECT_SIDE = 0.1
# ... add Copy-Blend on every image, which evened the seeds and the last epochs out and
# raised mAP50, and a fifth of the scale jitter, which tightened the boxes (objects trained at
# sizes near the ones validated; module text: "Sparse objects") ...
SMALL_SPARSE_TRAINING = {"copy_blend": 1.0, "scale": 0.1}
# ... and train the encoder and decoder at this multiple of lr0 (``head_lr_mult``), the backbone
# where SPARSE_TRAINING has it (three times lr0): those runs were still climbing at the end
SMALL_SPARSE_LR_MULT = 1.5
# ... and end on a longer no-augmentation tail (a quarter of the epochs instead of
# NO_AUG_FRACTION): those runs still gained in every plain epoch, and the longer tail halved
# the movement of the last 5 epochs at the same accuracy
SMALL_SPARSE_NO_AUG_FRACTION = 0.25


def objects_per_image(samples: Sequence[Any]) -> float:
    """Mean labelled objects per image over ``Sample`` records (crowd regions are not targets)."""
    if not samples:
        raise ValueError("D-FINE recipe: no training images to count objects in")
    return sum(len(s.labels) for s in samples) / len(samples)


def median_object_side(samples: Sequence[Any]) -> float | None:
    """Median over every labelled box of its side (square root of its area) as a share of its
    image's long side; None without boxes."""
    sides = [math.sqrt(max(float(b[2] - b[0]), 0.0) * max(float(b[3] - b[1]), 0.0)) / max(s.width, s.height, 1)
             for s in samples for b in s.boxes]
    return statistics.median(sides) if sides else None


def sparse_cls_weight(per_image: float, from_pretrained: bool = False) -> float | None:
    """The classification weight for a training set averaging ``per_image`` objects per image:
    ``SPARSE_CLS_WEIGHT`` from scratch on sparse sets, else None (the criterion's 1.0)."""
    if from_pretrained or per_image > SPARSE_OBJECTS_PER_IMAGE:
        return None
    return SPARSE_CLS_WEIGHT


def sparse_data_defaults(per_image: float, from_pretrained: bool = False, object_side: float | None = None,
                         epochs: int | None = None) -> dict[str, Any]:
    """TrainConfig keys for a training set averaging ``per_image`` objects per image: from
    scratch on sparse sets, twice the classification weight, no lr warm-up, mosaic on every
    image, no colour jitter, the backbone at three times the lr and BatchNorm statistics
    re-measured before each validation; when the median ``object_side``
    (``median_object_side``) is under ``SMALL_OBJECT_SIDE``, also Copy-Blend, a fifth of the
    scale jitter, the rest of the model at ``SMALL_SPARSE_LR_MULT`` times lr0 (``head_lr_mult``;
    the backbone stays at three times it), and given the run's
    ``epochs`` a no-augmentation tail of ``SMALL_SPARSE_NO_AUG_FRACTION`` of them (module
    text, "Sparse objects"); else none (the recipe stands)."""
    weight = sparse_cls_weight(per_image, from_pretrained)
    if weight is None:
        return {}
    values = {"cls_weight": weight, **SPARSE_TRAINING}
    if object_side is not None and object_side < SMALL_OBJECT_SIDE:
        values.update(SMALL_SPARSE_TRAINING)
        values["head_lr_mult"] = SMALL_SPARSE_LR_MULT
        if epochs is not None:
            values["close_mosaic"] = no_aug_epochs(epochs, SMALL_SPARSE_NO_AUG_FRACTION)
    return values


def no_aug_epochs(epochs: int, fraction: float = NO_AUG_FRACTION) -> int:
    """Final epochs without mosaic / MixUp for a run of ``epochs``: ``fraction`` of them (15%),
    at least 1."""
    if int(epochs) < 1:
        raise ValueError(f"D-FINE recipe: epochs must be >= 1, got {epochs}")
    return max(1, round(fraction * int(epochs)))


def small_data_recipe(size: str, epochs: int | None = None, from_pretrained: bool = False) -> dict[str, Any]:
    """detforge's D-FINE recipe for ``size`` ("n".."x") as TrainConfig keys (see the module text).

    ``epochs`` sizes the no-augmentation tail (default: TrainConfig's 100 epochs);
    ``from_pretrained`` keeps the official reduced backbone lr for official weights.
    """
    official = official_recipe(size, "custom")
    return {
        "optimizer": official["optimizer"],
        "lr0": official["lr0"],
        "backbone_lr_mult": official["backbone_lr_mult"] if from_pretrained else 1.0,
        "weight_decay": official["weight_decay"],
        "momentum": official["momentum"],
        "scheduler": "cosine",
        "lrf": 0.1,
        "warmup_epochs": 2.0,
        "warmup_iters": None,
        "clip_grad": official["clip_grad"],
        "ema": True,
        "ema_decay": official["ema_decay"],
        "ema_warmup": "auto",  # sized from the run's steps: see the module text
        "amp": official["amp"],
        "mosaic": 0.5,
        "mixup": 0.2,
        "close_mosaic": no_aug_epochs(DEFAULT_EPOCHS if epochs is None else epochs),
        "multi_scale": official["multi_scale"],
        "fliplr": official["fliplr"],
        "mal": True,
        # MAL's exponent: 1.0 from scratch (see the module text); DEIM's 1.5, under which the
        # official weights were trained, when fine-tuning them
        "mal_gamma": 1.5 if from_pretrained else 1.0,
        # MAL scores aim at IoU**gamma (0.6 for a 0.7-IoU box at 1.5, 0.7 at 1.0), below VFL's;
        # the 0.5 that suits VFL cut most true detections: on BCCD (epoch 5, gamma 1.5) F1 was
        # 0.000 at 0.5 and 0.343 at 0.25
        "conf": 0.25,
    }
