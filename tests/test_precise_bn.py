"""precise_bn: BatchNorm statistics re-measured for the evaluated weights, against hand computation,
and in the trainer (the evaluated and saved weights get them, the training does not change)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detforge.engine.precise_bn import batchnorm_layers, recalibrate_batchnorm


class _TwoBlock(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), norm(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 2, 1), norm(2)
        self.unused = norm(5)  # never reached by forward

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def _pooled(chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance over every image and pixel of ``chunks``."""
    flat = torch.cat([c.transpose(0, 1).reshape(c.shape[1], -1) for c in chunks], dim=1).double()
    return flat.mean(1), flat.var(1, unbiased=True)


def test_statistics_are_the_inputs_pooled_over_every_batch_layer_after_layer():
    torch.manual_seed(0)
    model = _TwoBlock()
    batches = [torch.rand(3, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2.0 + 0.5]
    before_unused = model.unused.running_var.clone()
    # by hand: layer 1 sees conv1's outputs; layer 2 sees conv2 of layer 1 normalised by each
    # batch's own (biased) statistics, as in training
    y1 = [model.conv1(b).detach() for b in batches]
    y2 = []
    for y in y1:
        m, v = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
        z = (y - m) / torch.sqrt(v + model.bn1.eps) * model.bn1.weight.view(1, -1, 1, 1) + model.bn1.bias.view(1, -1, 1, 1)
        y2.append(model.conv2(F.relu(z)).detach())
    mean1, var1 = _pooled(y1)
    mean2, var2 = _pooled(y2)

    model.train()
    n = recalibrate_batchnorm(model, batches)

    assert n == 5
    assert torch.allclose(model.bn1.running_mean.double(), mean1, atol=1e-5)
    assert torch.allclose(model.bn1.running_var.double(), var1, rtol=1e-4)
    assert torch.allclose(model.bn2.running_mean.double(), mean2, atol=1e-5)
    assert torch.allclose(model.bn2.running_var.double(), var2, rtol=1e-4)
    assert torch.equal(model.unused.running_var, before_unused)  # not reached: kept
    assert model.training and "forward" not in vars(model.bn1)  # mode and the class forward restored


def test_uint8_images_are_scaled_like_the_validator_and_eval_mode_is_kept():
    torch.manual_seed(1)
    model = _TwoBlock().eval()
    pixels = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    recalibrate_batchnorm(model, [pixels])
    mean_u8 = model.bn1.running_mean.clone()
    recalibrate_batchnorm(model, [pixels.float() / 255])
    assert torch.allclose(model.bn1.running_mean, mean_u8, atol=1e-6)
    assert not model.training
    # the recalibrated model in eval mode normalises conv1's outputs to ~zero mean over those images
    with torch.no_grad():
        z = model.bn1(model.conv1(pixels.float() / 255))
    w, b = model.bn1.weight.view(1, -1, 1, 1), model.bn1.bias.view(1, -1, 1, 1)
    assert torch.allclose(((z - b) / w).mean((0, 2, 3)), torch.zeros(4), atol=1e-4)


def test_syncbatchnorm_needs_no_process_group_and_frozen_norms_are_left_alone():
    from torchvision.ops import FrozenBatchNorm2d

    model = nn.SyncBatchNorm.convert_sync_batchnorm(_TwoBlock())
    assert not torch.distributed.is_initialized()
    recalibrate_batchnorm(model, [torch.rand(2, 3, 5, 5)])
    assert float(model.bn1.running_var.sum()) != 4.0  # moved from the initial ones
    frozen = _TwoBlock(norm=FrozenBatchNorm2d)
    assert batchnorm_layers(frozen) == []
    assert recalibrate_batchnorm(frozen, [torch.rand(1, 3, 5, 5)]) == 0


def test_the_trainer_recalibrates_what_it_evaluates_and_saves_without_changing_the_training(tmp_path):
    from detforge.engine.resolve import resolve_train_config
    from detforge.data.synthetic import ensure_synthetic
    from detforge.engine.checkpoint import read_detforge_checkpoint
    from detforge.engine.trainer import Trainer

    root = ensure_synthetic(tmp_path / "data", n_train=8, n_val=4, size=64, objects=(1, 2))
    base = {"model": "fcos-n", "data": str(root), "imgsz": 64, "batch": 4, "epochs": 2, "workers": 0,
            "device": "cpu", "logger": "none", "plots": False, "seed": 3, "exist_ok": True}
    runs = {}
    for n in (0, 6):
        cfg = resolve_train_config({**base, "precise_bn": n, "project": str(tmp_path / f"runs{n}"), "name": "r"})
        trainer = Trainer(cfg)
        trainer.train()
        runs[n] = (trainer, read_detforge_checkpoint(trainer.weights_dir / "last.pt", need="training"))
    (plain, plain_ck), (recal, recal_ck) = runs[0], runs[6]
    assert plain.bn_loader is None
    chosen = [s.image_path for s in recal.bn_loader.dataset.samples]  # 6 of 8, spread over the set
    assert chosen == [recal.train_set.samples[i].image_path for i in (0, 1, 2, 4, 5, 6)]
    # the training itself is the same: raw weights and their BatchNorm buffers match
    for k, v in plain_ck["train_weights"].items():
        assert torch.equal(v, recal_ck["train_weights"][k]), k
    # the saved (EMA) weights differ only in BatchNorm statistics ...
    stats = [k for k in plain_ck["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    others = [k for k in plain_ck["model"] if k not in stats and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(plain_ck["model"][k], recal_ck["model"][k]) for k in others)
    assert any(not torch.equal(plain_ck["model"][k], recal_ck["model"][k]) for k in stats)
    # ... and those are the statistics of the saved weights over the chosen un-augmented images
    model = recal.ema.module
    model.load_state_dict(recal_ck["model"])
    expected = {k: v.clone() for k, v in model.state_dict().items() if k in stats}
    recalibrate_batchnorm(model, (images for images, _t, _m in recal.bn_loader))
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.allclose(v, expected[k], rtol=1e-5, atol=1e-6), k


def test_precise_bn_refuses_a_negative_count():
    from detforge.engine.resolve import resolve_train_config

    with pytest.raises(Exception, match="precise_bn"):
        resolve_train_config({"model": "fcos-n", "data": "x", "precise_bn": -1})
