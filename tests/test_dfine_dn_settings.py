"""D-FINE's denoising settings as training keys (``dn_queries``, ``dn_box_noise``,
``dn_label_noise``): they reach the decoder, change the query groups as worked by hand, and
leave inference alone for the same weights."""

from __future__ import annotations

import pytest
import torch

from detforge.config import ConfigError, build_config
from detforge.models.dfine import DFine
from detforge.models.zoo import get_spec


def test_keys_reach_the_decoder():
    spec = get_spec("dfine-n")
    assert "num_denoising" not in spec.options(build_config({"model": "dfine-n"}))  # the size's own stays
    cfg = build_config({"model": "dfine-n", "dn_queries": 300, "dn_box_noise": 0.4, "dn_label_noise": 0.2})
    options = spec.options(cfg)
    assert (options["num_denoising"], options["box_noise_scale"], options["label_noise_ratio"]) == (300, 0.4, 0.2)
    decoder = DFine("n", 2, **{k: options[k] for k in ("num_denoising", "box_noise_scale", "label_noise_ratio")}).decoder
    assert (decoder.num_denoising, decoder.box_noise_scale, decoder.label_noise_ratio) == (300, 0.4, 0.2)
    with pytest.raises(ConfigError, match="dn_label_noise"):
        build_config({"model": "dfine-n", "dn_label_noise": 1.5})


def _targets():
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [40.0, 10.0, 80.0, 40.0]]), "labels": torch.tensor([1, 0])},
            {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1])}]


def test_groups_follow_the_budget_and_inference_is_unchanged():
    torch.manual_seed(0)
    more = DFine("n", 2, num_denoising=300, box_noise_scale=0.4).train()
    images = torch.rand(2, 3, 96, 96)
    targets = more._normalise_targets(_targets(), images)
    out = more.decoder(more.encoder(more.backbone(images)), targets)
    # 300 queries // 2 boxes at most per image = 150 groups, each a positive and a negative copy of 2 slots
    assert out["dn_meta"]["dn_num_group"] == 150 and out["dn_meta"]["dn_num_split"][0] == 600
    assert [len(i) for i in out["dn_meta"]["dn_positive_idx"]] == [300, 150]
    losses = more(images, _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    off = DFine("n", 2, num_denoising=0).train()
    assert "dn_meta" not in off.decoder(off.encoder(off.backbone(images)), targets)
    assert not any("_dn" in k for k in off(images, _targets()))
    # eval: the same weights give the same boxes whatever the denoising budget
    plain = DFine("n", 2)
    plain.load_state_dict(more.state_dict())
    more.eval(), plain.eval()
    with torch.no_grad():
        a, b = more(images), plain(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_box_noise_scales_the_jitter():
    from torchvision.ops import box_convert

    from detforge.models.dfine.denoising import build_denoising_queries

    embed = torch.nn.Embedding(3, 8, padding_idx=2)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    shifts = {}
    for scale in (1.0, 0.4):
        torch.manual_seed(0)  # the same uniform draws: the jitter is the scale times the same numbers
        dn = build_denoising_queries([{"labels": torch.tensor([0]), "boxes": boxes}], 2, 10, embed,
                                     num_denoising=50, label_noise_ratio=0.0, box_noise_scale=scale)
        noised = box_convert(torch.sigmoid(dn.boxes_unact[0]), "cxcywh", "xyxy").reshape(50, 2, 4)
        half = boxes[0, 2:].repeat(2) / 2
        shifts[scale] = (noised - box_convert(boxes, "cxcywh", "xyxy")) / half
    positives = shifts[0.4][:, 0].abs()
    assert positives.max() < 0.4 + 1e-4
    # positives never leave the image at either scale here, so they scale exactly (no clipping)
    assert torch.allclose(shifts[0.4][:, 0], 0.4 * shifts[1.0][:, 0], atol=1e-4)


def test_label_drop_gives_denoising_queries_no_class():
    from detforge.models.dfine.denoising import build_denoising_queries

    options = get_spec("dfine-n").options(build_config({"model": "dfine-n", "dn_label_drop": 1.0}))
    assert options["label_drop_ratio"] == 1.0
    assert DFine("n", 2, label_drop_ratio=1.0).decoder.label_drop_ratio == 1.0
    with pytest.raises(ConfigError, match="dn_label_drop"):
        build_config({"model": "dfine-n", "dn_label_drop": -0.1})
    torch.manual_seed(0)
    embed = torch.nn.Embedding(3, 8, padding_idx=2)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.4, 0.2, 0.2]])}]
    kept = build_denoising_queries(targets, 2, 10, embed, num_denoising=8, label_noise_ratio=0.0)
    dropped = build_denoising_queries(targets, 2, 10, embed, num_denoising=8, label_noise_ratio=0.0,
                                      label_drop_ratio=1.0)
    # 8 // 2 boxes = 4 groups of [2 positives, 2 negatives]: 16 slots per image; image 1 has one real box
    # kept: every real slot carries its class's row, the padding slots the zero row
    labels = torch.tensor([[0, 1] * 8, [1, 2] * 8])
    assert torch.equal(kept.content, embed(labels))
    # dropped: every slot carries the padding (no class) row, which is zero and never trained
    assert torch.equal(dropped.content, torch.zeros_like(dropped.content))
    # the group layout is the same either way (the boxes differ: the drop draws from the RNG first)
    assert dropped.meta["dn_num_group"] == kept.meta["dn_num_group"] == 4
