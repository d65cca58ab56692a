"""D-FINE decoder: query selection from the encoder memory, the decoder layers (their blocks are
in decoder_layers.py) over the feature levels, and Fine-grained Distribution Refinement of the
boxes layer by layer.

Attribute names follow the official state dict (``decoder.layers.0.cross_attn.sampling_offsets``,
``dec_bbox_head.2.layers.1``, ``enc_output.proj``...) so official checkpoints load by name.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.models.dfine.decoder_layers import MLP, DecoderLayer, DecoderStack, prior_bias
from detforge.models.dfine.denoising import DenoisingQueries, build_denoising_queries, inverse_sigmoid
from detforge.models.dfine.fdr import distance2bbox, weighting_function


def edge_distances(corner_logits: Tensor, bins: Tensor) -> Tensor:
    """``fdr.distribution_to_distance`` written as one [N, bins] x [bins, 1] matrix product: the
    same values, but ONNX runtimes run it several times faster than a batched product with a
    1-D operand."""
    num_bins = bins.numel()
    probs = F.softmax(corner_logits.reshape(-1, num_bins), dim=-1)
    return (probs @ bins.to(probs.dtype)[:, None]).reshape(*corner_logits.shape[:-1], 4)


def make_anchors(shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32,
                 base_size: float = 0.05, eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """One anchor per feature cell, (cx, cy, w, h) in inverse-sigmoid space with w = h =
    ``base_size * 2**level``; anchors touching the image border (within ``eps``) are invalid and
    set to +inf. Returns anchors [1, N, 4] and the valid mask [1, N, 1]."""
    per_level = []
    for level, (h, w) in enumerate(shapes):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        size = torch.full_like(cx, base_size * 2.0**level)
        per_level.append(torch.stack([cx, cy, size, size], dim=-1).reshape(-1, 4))
    anchors = torch.cat(per_level)[None]
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid, anchors, torch.full_like(anchors, float("inf"))), valid


class DFineDecoder(nn.Module):
    """Returns the official output dict: eval ``{pred_logits, pred_boxes}``; training adds
    pred_corners, ref_points, up, reg_scale, aux_outputs, pre_outputs, enc_aux_outputs, enc_meta
    and, with denoising, dn_outputs, dn_pre_outputs, dn_meta.

    ``o2m_queries`` > 0 adds, in training only, H-DETR's one-to-many group (arXiv 2207.13080): that
    many more queries from the same top-scored encoder cells run through the same layers and heads,
    masked from the one-to-one queries (and they from it), and come out as ``o2m_outputs`` for a
    loss that matches them one-to-many. Evaluation, export and the deploy form never build them.

    ``enc_dense`` adds, in training only, ``enc_dense_outputs``: the class logits and boxes of every
    encoder cell (not only the top-scored ones the queries start from), for a loss that matches
    each object to several cells (dense auxiliary supervision of query selection, as Co-DETR's
    auxiliary heads give the encoder). It uses the existing heads, so inference is unchanged.
    """

    def __init__(self, num_classes: int, feat_channels: tuple[int, ...], feat_strides: tuple[int, ...],
                 dim: int = 256, ffn: int = 1024, heads: int = 8, num_layers: int = 6,
                 num_points: tuple[int, ...] = (3, 6, 3), num_queries: int = 300, reg_max: int = 32,
                 reg_scale: float = 4.0, eval_idx: int = -1, num_denoising: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0, label_drop_ratio: float = 0.0,
                 anchor_image_size: tuple[int, int] = (640, 640), o2m_queries: int = 0,
                 enc_dense: bool = False) -> None:
        super().__init__()
        if len(feat_channels) != len(feat_strides) or len(num_points) != len(feat_channels):
            raise ValueError(
                f"D-FINE decoder: {len(feat_channels)} feature channels, {len(feat_strides)} strides and "
                f"{len(num_points)} point counts must all be one per level"
            )
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.reg_max = reg_max
        self.heads = heads
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f"D-FINE decoder: eval_idx {eval_idx} is outside {num_layers} layers")
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.label_drop_ratio = label_drop_ratio
        if o2m_queries < 0:
            raise ValueError(f"D-FINE decoder: o2m_queries must be >= 0, got {o2m_queries}")
        self.o2m_queries = int(o2m_queries)
        self.enc_dense = bool(enc_dense)

        self.input_proj = nn.ModuleList(
            nn.Identity() if c == dim else
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, dim, 1, bias=False), norm=nn.BatchNorm2d(dim)))
            for c in feat_channels
        )
        # fixed FDR constants, stored as (frozen) parameters like the official model
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([float(reg_scale)]), requires_grad=False)
        self.decoder = DecoderStack(
            [DecoderLayer(dim, heads, ffn, tuple(num_points)) for _ in range(num_layers)], reg_max, self.up, self.reg_scale
        )
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * dim, dim, 2)
        self.enc_output = nn.Sequential(OrderedDict(proj=nn.Linear(dim, dim), norm=nn.LayerNorm(dim)))
        self.enc_score_head = nn.Linear(dim, num_classes)
        self.enc_bbox_head = MLP(dim, dim, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_layers))
        self.pre_bbox_head = MLP(dim, dim, 4, 3)
        self.dec_bbox_head = nn.ModuleList(MLP(dim, dim, 4 * (reg_max + 1), 3) for _ in range(num_layers))

        # The official model keeps the anchors of its 640x640 evaluation size as buffers; they are
        # kept (so checkpoints load by name) but anchors are always rebuilt from the actual
        # feature sizes, so any input size works.
        h, w = anchor_image_size
        anchors, valid = make_anchors([(h // s, w // s) for s in feat_strides], torch.device("cpu"))
        self.register_buffer("anchors", anchors)
        self.register_buffer("valid_mask", valid)
        self._init_weights()

    def _init_weights(self) -> None:
        cls_bias = prior_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, cls_bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, cls_bias)
        for mlp in [self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        for layer in self.query_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        for proj in self.input_proj:
            if isinstance(proj, nn.Sequential):
                nn.init.xavier_uniform_(proj.conv.weight)

    # ---- pieces of the forward pass

    def _flatten_levels(self, feats: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        maps = [proj(f) for proj, f in zip(self.input_proj, feats)]
        shapes = [(m.shape[2], m.shape[3]) for m in maps]
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1), shapes

    def _values(self, memory: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
        b, n, c = memory.shape
        per_head = memory.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 3, 1)
        return [
            v.reshape(b * self.heads, c // self.heads, h, w)
            for v, (h, w) in zip(per_head.split([h * w for h, w in shapes], dim=-1), shapes)
        ]

    def _encoder_cells(self, memory: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Every encoder cell's anchor (logit form), projected memory and class logits."""
        # anchors are made in float32 (their logits reach +-4.6 and +inf) and stay so under
        # autocast; a model cast as a whole (.half() for FP16 inference or export) takes them in
        # its own dtype, else float32 boxes would meet its half-precision layers
        anchors, valid = make_anchors(shapes, memory.device)
        anchors = anchors.to(self.enc_score_head.weight.dtype)
        enc_memory = self.enc_output(valid.to(memory.dtype) * memory)
        return anchors, enc_memory, self.enc_score_head(enc_memory)

    def _select_queries(self, anchors: Tensor, enc_memory: Tensor, enc_logits: Tensor, extra: int = 0):
        """Top-``num_queries`` encoder cells by best class logit -> content, box and the
        encoder's own predictions for them (supervised in training). ``extra`` > 0 also returns
        the content and boxes of the top ``extra`` cells (the one-to-many group), else None."""
        k = min(self.num_queries, enc_logits.shape[1])
        if extra <= 0:
            index = enc_logits.max(-1).values.topk(k, dim=1).indices
            top_memory, top_boxes_unact = self._gather_cells(enc_memory, anchors, index)
            top_logits = enc_logits.gather(1, index[..., None].expand(-1, -1, enc_logits.shape[-1]))
            return top_memory, top_boxes_unact, top_logits, None
        # one ranking for both groups: the one-to-one queries are its first k cells (as without
        # the extra group), the one-to-many ones its first ``extra``
        m = min(extra, enc_logits.shape[1])
        ranked = enc_logits.max(-1).values.topk(max(k, m), dim=1).indices
        index = ranked[:, :k]
        top_memory, top_boxes_unact = self._gather_cells(enc_memory, anchors, index)
        top_logits = enc_logits.gather(1, index[..., None].expand(-1, -1, enc_logits.shape[-1]))
        return top_memory, top_boxes_unact, top_logits, self._gather_cells(enc_memory, anchors, ranked[:, :m])

    def _gather_cells(self, enc_memory: Tensor, anchors: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        top_memory = enc_memory.gather(1, index[..., None].expand(-1, -1, enc_memory.shape[-1]))
        top_anchors = anchors.expand(enc_memory.shape[0], -1, -1).gather(1, index[..., None].expand(-1, -1, 4))
        return top_memory, self.enc_bbox_head(top_memory) + top_anchors

    def bins(self) -> Tensor:
        project = getattr(self, "project", None)
        if project is not None:
            return project
        return weighting_function(self.reg_max, self.up, self.reg_scale)

    def forward(self, feats: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict:
        if self.training and hasattr(self, "project"):
            raise RuntimeError("this D-FINE decoder is in its deploy (inference) form and cannot run in "
                               "training mode; call .eval() on the model")
        memory, shapes = self._flatten_levels(feats)
        o2m = self.o2m_queries if self.training and targets is not None else 0
        anchors, enc_memory, enc_logits = self._encoder_cells(memory, shapes)
        top_memory, top_boxes_unact, top_logits, o2m_cells = self._select_queries(anchors, enc_memory, enc_logits, o2m)
        denoise = None
        dn_meta = None
        if self.training and self.num_denoising > 0 and targets is not None:
            # tiny inputs can have fewer cells than num_queries: use the count actually selected
            built = build_denoising_queries(targets, self.num_classes, top_memory.shape[1], self.denoising_class_embed,
                                            self.num_denoising, self.label_noise_ratio, self.box_noise_scale,
                                            self.label_drop_ratio)
            if isinstance(built, DenoisingQueries):
                denoise, dn_meta = built, built.meta
            else:
                dn_meta = built
        enc_boxes = top_boxes_unact.sigmoid()
        content = top_memory.detach()
        ref_unact = top_boxes_unact.detach()
        attn_mask = None
        if denoise is not None:
            content = torch.cat([denoise.content, content], dim=1)
            ref_unact = torch.cat([denoise.boxes_unact, ref_unact], dim=1)
            attn_mask = denoise.attn_mask
        elif dn_meta is not None:
            # no image has a box, so no denoising query: a zero-weighted use keeps the embedding
            # in the graph with an exact zero gradient. Every rank of a data-parallel job must
            # give every parameter a gradient (DDP waits for it, FSDP reduce-scatters what
            # exists), and only inside this forward does FSDP hold the parameter unsharded.
            content = content + self.denoising_class_embed.weight.sum() * 0
        num_o2m = 0
        if o2m_cells is not None:
            # appended after the one-to-one queries; each group attends only to itself
            num_o2m = o2m_cells[0].shape[1]
            before = content.shape[1]
            content = torch.cat([content, o2m_cells[0].detach()], dim=1)
            ref_unact = torch.cat([ref_unact, o2m_cells[1].detach()], dim=1)
            attn_mask = group_attention_mask(attn_mask, before, num_o2m, content.device)

        out = self._refine(content, ref_unact, self._values(memory, shapes), attn_mask)
        if not self.training:
            return {"pred_logits": out["logits"][-1], "pred_boxes": out["boxes"][-1]}
        o2m_out = None
        if num_o2m:
            out, o2m_out = _split_last(out, num_o2m)
        result = self._training_outputs(out, top_logits, enc_boxes, dn_meta)
        if o2m_out is not None:
            result["o2m_outputs"] = self._training_outputs(o2m_out, None, None, None)
        if self.enc_dense and targets is not None:
            # every cell's class and box from the same heads as the selected cells', for the
            # dense one-to-many loss
            result["enc_dense_outputs"] = {
                "pred_logits": enc_logits, "pred_boxes": (self.enc_bbox_head(enc_memory) + anchors).sigmoid(),
            }
        return result

    def _refine(self, content: Tensor, ref_unact: Tensor, values: list[Tensor], attn_mask: Tensor | None) -> dict:
        """Run the decoder layers. Layer 0 predicts an initial box from the query's reference box;
        every layer then predicts edge-distribution logits that add to the previous layer's, and
        decodes them (FDR) around that fixed initial box."""
        bins = self.bins()
        stack = self.decoder
        x = content
        prev_x = None
        prev_corners = None
        ref_boxes = ref_unact.sigmoid()
        logits, boxes, corners_out, refs = [], [], [], []
        pre_logits = pre_boxes = initial_boxes = None
        last = self.num_layers - 1 if self.training else self.eval_idx
        for i in range(last + 1):
            pos = self.query_pos_head(ref_boxes).clamp(min=-10, max=10)
            x = stack.layers[i](x, ref_boxes, values, pos, attn_mask)
            if i == 0:
                pre_boxes = torch.sigmoid(self.pre_bbox_head(x) + inverse_sigmoid(ref_boxes))
                if self.training:
                    pre_logits = self.dec_score_head[0](x)
                initial_boxes = pre_boxes.detach()
            # the head sees this layer's features plus the previous layer's (without gradient)
            head_in = x if prev_x is None else x + prev_x
            corners = self.dec_bbox_head[i](head_in)
            if prev_corners is not None:
                corners = corners + prev_corners
            refined = distance2bbox(initial_boxes, edge_distances(corners, bins), self.reg_scale)
            if self.training or i == self.eval_idx:
                logits.append(stack.lqe_layers[i](self.dec_score_head[i](x), corners))
                boxes.append(refined)
                corners_out.append(corners)
                refs.append(initial_boxes)
            prev_corners = corners
            ref_boxes = refined.detach()
            prev_x = x.detach()
        return {
            "logits": torch.stack(logits), "boxes": torch.stack(boxes), "corners": torch.stack(corners_out),
            "refs": torch.stack(refs), "pre_logits": pre_logits, "pre_boxes": pre_boxes,
        }

    def _training_outputs(self, out: dict, enc_logits: Tensor, enc_boxes: Tensor, dn_meta: dict | None) -> dict:
        logits, boxes, corners, refs = out["logits"], out["boxes"], out["corners"], out["refs"]
        pre_logits, pre_boxes = out["pre_logits"], out["pre_boxes"]
        if dn_meta is not None:
            split = dn_meta["dn_num_split"]
            dn_pre_logits, pre_logits = pre_logits.split(split, dim=1)
            dn_pre_boxes, pre_boxes = pre_boxes.split(split, dim=1)
            dn_logits, logits = logits.split(split, dim=2)
            dn_boxes, boxes = boxes.split(split, dim=2)
            dn_corners, corners = corners.split(split, dim=2)
            dn_refs, refs = refs.split(split, dim=2)
        # copies, not the parameters: under FSDP the decoder's parameters are freed (resharded)
        # when its forward returns, before the loss reads them (the loss needs no gradient here)
        result = {
            "pred_logits": logits[-1], "pred_boxes": boxes[-1], "pred_corners": corners[-1],
            "ref_points": refs[-1], "up": self.up.detach().clone(), "reg_scale": self.reg_scale.detach().clone(),
            "aux_outputs": _layer_outputs(logits[:-1], boxes[:-1], corners[:-1], refs[:-1], corners[-1], logits[-1]),
            "pre_outputs": {"pred_logits": pre_logits, "pred_boxes": pre_boxes},
        }
        if enc_logits is not None:
            result["enc_aux_outputs"] = [{"pred_logits": enc_logits, "pred_boxes": enc_boxes}]
            result["enc_meta"] = {"class_agnostic": False}
        if dn_meta is not None:
            result["dn_outputs"] = _layer_outputs(dn_logits, dn_boxes, dn_corners, dn_refs, dn_corners[-1], dn_logits[-1])
            result["dn_pre_outputs"] = {"pred_logits": dn_pre_logits, "pred_boxes": dn_pre_boxes}
            result["dn_meta"] = dn_meta
        return result

    def deploy(self) -> None:
        """Inference form: freeze the bin values, drop the layers after ``eval_idx`` and the
        heads that only the training outputs use (as the official convert_to_deploy does), and
        the denoising embedding."""
        self.register_buffer("project", self.bins().detach().clone(), persistent=False)
        keep = self.eval_idx + 1
        self.decoder.layers = self.decoder.layers[:keep]
        self.decoder.lqe_layers = nn.ModuleList(
            [nn.Identity()] * self.eval_idx + [self.decoder.lqe_layers[self.eval_idx]]
        )
        self.dec_score_head = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.dec_score_head[self.eval_idx]])
        self.dec_bbox_head = self.dec_bbox_head[:keep]
        self.num_layers = keep
        if hasattr(self, "denoising_class_embed"):
            del self.denoising_class_embed
        self.num_denoising = 0


def group_attention_mask(mask: Tensor | None, before: int, extra: int, device: torch.device) -> Tensor:
    """Self-attention mask (True = may not attend) for ``before`` queries (masked as ``mask``
    says, or not at all) followed by ``extra`` queries of a separate group: neither side sees
    the other."""
    size = before + extra
    out = torch.ones((size, size), dtype=torch.bool, device=device)
    out[:before, :before] = mask if mask is not None else False
    out[before:, before:] = False
    return out


def _split_last(out: dict, n: int) -> tuple[dict, dict]:
    """The decoder outputs of ``_refine`` split into (all queries but the last n, the last n)."""
    first, last = {}, {}
    for key, value in out.items():
        axis = 1 if key.startswith("pre_") else 2  # pre_*: [B, Q, ...]; the rest [layers, B, Q, ...]
        first[key], last[key] = value.split([value.shape[axis] - n, n], dim=axis)
    return first, last


def _layer_outputs(logits, boxes, corners, refs, teacher_corners, teacher_logits) -> list[dict]:
    return [
        {"pred_logits": a, "pred_boxes": b, "pred_corners": c, "ref_points": d,
         "teacher_corners": teacher_corners, "teacher_logits": teacher_logits}
        for a, b, c, d in zip(logits, boxes, corners, refs)
    ]
