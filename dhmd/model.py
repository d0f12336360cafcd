"""DHMD: Decoupled Hierarchical Multimodal Distillation (the whole model, read top to bottom).

    text, audio, video (B, T_m, D_m) + masks (B, T_m)
      -> TemporalProjection per modality (Conv1d, same length)            X~_m      (B, T_m, C)
      -> FeatureDecoupler  [use_fd]                                      X_m^com, X_m^prt; L_rec L_cyc L_ort
         homogeneous space:   X_m^com                                     (B, T_m, C)
         heterogeneous space: X_m^prt -> CrossmodalAttention [use_ca]    Z_{->m}   (B, T_m, 2C)
      per space: pooled over real frames -> auxiliary head f (shared by the space's modalities) -> logits
                 -> GraphDistillationUnit [use_gd]  (HoGD / HeGD)         edges (B,3,3); L_dtl
                 -> DictionaryMatching [use_dm]     (HoDM / HeDM)         attention (B,3,K); L_ctr
      -> FusionHead over [coarse, fine] blocks of both spaces                prediction

Losses (Eq. 14): total = task + lambda_dec * (rec + cyc + gamma * (mar + ort))
                       + lambda_dtl * (dtl_homo + dtl_hetero) + lambda_dic * (ctr_homo + ctr_hetero).
The task loss is the loss of the fused prediction plus the loss of the six auxiliary unimodal heads,
their mean (aux_loss="mean") or their sum (aux_loss="sum", as the DMD code trains them).  L_mar is taken
on the pooled X_m^com; L_ctr on the dictionary reconstructions.

Ablations (Table 6): use_fd=False leaves one space (the projected features take the heterogeneous path:
CA, GD, DM as switched) and removes the homogeneous space with its head, HoGD, HoDM and rec/cyc/mar/ort;
use_ca=False feeds X_m^prt to the rest directly (C wide); use_gd=False removes both GD-Units and the
dtl losses; use_dm=False removes both dictionaries and the ctr losses (fusion then uses coarse features).
A removed component's loss is absent from `losses` and its outputs (edges, dictionary attention) are None.

Padding: every reduction over time is masked (masks.py), convolutions see zeros at padded frames and
attention masks padded keys, so a sample's output does not depend on what else is in its batch.  A sample
with no real frame in a modality (no face in the whole clip) is given one all-zero frame there: inputs are
zeroed with the caller's masks before masks.prepare_mask's promotion of frame 0 takes effect, so the
sample's prediction is that of the same sample with a one-frame all-zero input for that modality,
whatever its padding held.

Precision: under bf16 autocast the projections, attention, decoupling and dictionaries run in bf16; the
auxiliary heads (fusion.Float32Linear), the GD-Units and the fusion head run in float32 with autocast
disabled, so predictions, unimodal logits and edges are float32 values, not bf16 values cast back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import DHMDConfig
from .crossmodal import CrossmodalAttention
from .decoupling import MODALITIES, Decoupled, FeatureDecoupler
from .dictionary import DictionaryMatching
from .fusion import Float32Linear, FusionHead
from .graph_distill import GraphDistillationUnit
from .losses import cross_modal_triplet_loss, task_loss, triplet_classes
from .masks import key_mask_or_none, masked_mean, prepare_mask, zero_padded
from .projection import TemporalProjection


@dataclass
class DHMDOutput:
    """What DHMD.forward returns (see the module docstring for shapes)."""

    prediction: Tensor                                  # (B,) regression, (B, n_classes) logits otherwise
    unimodal: dict[str, Tensor]                         # "text"/"audio"/"video" -> same shape as prediction
                                                        # (the mean of the spaces' auxiliary heads)
    losses: dict[str, Tensor] = field(default_factory=dict)   # empty without labels
    edges_homo: Tensor | None = None                    # (B, 3, 3), W[b, teacher, student], zero diagonal,
                                                        # the six off-diagonal entries of a sample sum to 1
    edges_hetero: Tensor | None = None
    dict_attn_homo: Tensor | None = None                # (B, 3, K), rows sum to 1
    dict_attn_hetero: Tensor | None = None
    unimodal_homo: dict[str, Tensor] | None = None      # each space's auxiliary head alone (Table 7);
    unimodal_hetero: dict[str, Tensor] | None = None    # None for a space the model does not have
    pooled_homo: Tensor | None = None                   # (B, 3, C) coarse features X_m^com pooled over real
    pooled_hetero: Tensor | None = None                 # frames; hetero (B, 3, 2C) with CA (Figs. 7-8)


@dataclass
class _Space:
    """Intermediate results of one feature space (homogeneous or heterogeneous)."""

    pooled: list[Tensor]
    logits: list[Tensor]
    blocks: list[Tensor]
    edges: Tensor | None = None
    dtl: Tensor | None = None
    dict_attn: Tensor | None = None
    recon: list[Tensor] | None = None


class DHMD(nn.Module):
    """The DHMD model; see the module docstring.  pretrained_bert=False (with finetune_bert) builds the
    BERT from its config only, for loading a checkpoint that holds the fine-tuned weights.  bert_path:
    where to load cfg.bert_model from when the caller has resolved its name (a folder), else the name."""

    def __init__(self, cfg: DHMDConfig, pretrained_bert: bool = True, bert_path: str | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        c, out = cfg.hidden_dim, cfg.out_dim
        classification = cfg.task != "regression"

        self.bert = None
        text_in = cfg.text_dim
        if cfg.finetune_bert:
            from .text_encoder import BertTextEncoder
            self.bert = BertTextEncoder(bert_path or cfg.bert_model, pretrained=pretrained_bert)
            text_in = self.bert.hidden_size
        self.text_dropout = nn.Dropout(cfg.text_dropout)
        self.in_dims = (text_in, cfg.audio_dim, cfg.video_dim)
        kernels = (cfg.kernel_text, cfg.kernel_audio, cfg.kernel_video)
        self.projections = nn.ModuleList(TemporalProjection(d, c, k) for d, k in zip(self.in_dims, kernels))

        # homogeneous space exists only with feature decoupling
        self.decoupler = FeatureDecoupler(c) if cfg.use_fd else None
        self.crossmodal = CrossmodalAttention(
            c, cfg.num_heads, cfg.num_layers, cfg.attn_dropouts, cfg.relu_dropout, cfg.res_dropout,
            cfg.embed_dropout, memory_layers=cfg.memory_depth) if cfg.use_ca else None
        hetero_dim = self.crossmodal.out_dim if cfg.use_ca else c

        def space(dim: int) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
            head = Float32Linear(dim, out)             # f (theta_1), auxiliary head; fp32 under autocast
            gd = GraphDistillationUnit(dim, out, cfg.gd_hidden, classification, cfg.gd_prior) \
                if cfg.use_gd else None
            dm = DictionaryMatching(dim, cfg.dictionary_size, cfg.dict_temperature, cfg.dict_learn_temperature,
                                    cfg.dict_scale_sqrt_d) if cfg.use_dm else None
            return head, gd, dm

        blocks: list[int] = []
        self.head_homo = self.gd_homo = self.dict_homo = None
        if cfg.use_fd:
            self.head_homo, self.gd_homo, self.dict_homo = space(c)
            blocks += [c * (2 if cfg.use_dm else 1)] * 3
        self.head_hetero, self.gd_hetero, self.dict_hetero = space(hetero_dim)
        blocks += [hetero_dim * (2 if cfg.use_dm else 1)] * 3
        self.fusion = FusionHead(blocks, out, cfg.out_dropout)

    # ------------------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: list[Tensor]) -> None:
        batch = inputs[0].shape[0]
        for name, x, dim in zip(MODALITIES, inputs, self.in_dims):
            if x.dim() != 3 or x.shape[0] != batch or x.shape[2] != dim:
                raise ValueError(f"{name} input must be (B={batch}, T, {dim}), got {tuple(x.shape)}")

    def _space(self, seqs: list[Tensor], masks: list[Tensor], head: nn.Module,
               gd: nn.Module | None, dm: nn.Module | None) -> _Space:
        pooled = [masked_mean(s, m) for s, m in zip(seqs, masks)]         # coarse features
        res = _Space(pooled=pooled, logits=[head(p) for p in pooled], blocks=pooled)
        if gd is not None:
            res.edges, res.dtl = gd(pooled, res.logits)
        if dm is not None:
            attn, recon = zip(*(dm(s, m) for s, m in zip(seqs, masks)))
            res.dict_attn, res.recon = torch.stack(attn, dim=1), list(recon)
            res.blocks = [torch.cat([p, r.to(p.dtype)], dim=-1) for p, r in zip(pooled, recon)]
        return res

    def forward(self, text: Tensor, audio: Tensor, video: Tensor, text_mask: Tensor | None = None,
                audio_mask: Tensor | None = None, video_mask: Tensor | None = None,
                labels: Tensor | None = None) -> DHMDOutput:
        cfg = self.config
        if self.bert is not None:
            if text_mask is None:
                text_mask = text[:, 1].bool()
            text = self.bert(text)
        inputs = [text, audio, video]
        self._check_inputs(inputs)
        batch, device = text.shape[0], text.device
        masks, observed = zip(*(prepare_mask(m, batch, x.shape[1], device)
                                for x, m in zip(inputs, (text_mask, audio_mask, video_mask))))
        masks = list(masks)
        key_masks = [key_mask_or_none(m) for m in masks]
        # zero the padding with the caller's masks first: a row without any real frame then has an
        # all-zero frame 0 where `masks` promoted it, not whatever its padding held
        inputs = [zero_padded(x.float(), o) for x, o in zip(inputs, observed)]
        inputs[0] = self.text_dropout(inputs[0])
        feats = [proj(x, m) for proj, x, m in zip(self.projections, inputs, masks)]

        # 1) feature decoupling -> homogeneous / heterogeneous sequences
        homo = dec = None
        hetero_seqs = feats
        if self.decoupler is not None:
            dec = self.decoupler(feats, masks)
            hetero_seqs = dec.prt
            homo = self._space(dec.com, masks, self.head_homo, self.gd_homo, self.dict_homo)
        # 2) cross-modal attention in the heterogeneous space
        if self.crossmodal is not None:
            hetero_seqs = self.crossmodal(hetero_seqs, masks, key_masks)
        # 3) coarse (GD) and fine (DM) distillation in the heterogeneous space
        hetero = self._space(hetero_seqs, masks, self.head_hetero, self.gd_hetero, self.dict_hetero)
        # 4) fusion and prediction
        spaces = [s for s in (homo, hetero) if s is not None]
        prediction = self.fusion([b for s in spaces for b in s.blocks])   # fp32: head runs without autocast
        unimodal = {name: torch.stack([s.logits[m] for s in spaces]).mean(0)
                    for m, name in enumerate(MODALITIES)}
        per_space = {id(s): dict(zip(MODALITIES, s.logits)) for s in spaces}
        if cfg.task == "regression":
            prediction = prediction.squeeze(-1)
            unimodal = {k: v.squeeze(-1) for k, v in unimodal.items()}
            per_space = {k: {m: v.squeeze(-1) for m, v in d.items()} for k, d in per_space.items()}

        output = DHMDOutput(
            prediction=prediction, unimodal=unimodal,
            edges_homo=homo.edges if homo else None, edges_hetero=hetero.edges,
            dict_attn_homo=homo.dict_attn if homo else None, dict_attn_hetero=hetero.dict_attn,
            unimodal_homo=per_space[id(homo)] if homo else None, unimodal_hetero=per_space[id(hetero)],
            pooled_homo=torch.stack(homo.pooled, dim=1) if homo else None,
            pooled_hetero=torch.stack(hetero.pooled, dim=1))
        if labels is not None:
            output.losses = self._losses(labels.to(device), prediction, spaces, homo, hetero, dec)
        return output

    def _losses(self, labels: Tensor, prediction: Tensor, spaces: list[_Space], homo: _Space | None,
                hetero: _Space, dec: Decoupled | None) -> dict[str, Tensor]:
        """Every loss of Eq. 14 that the enabled components define, and their weighted total."""
        cfg = self.config
        if labels.shape != (prediction.shape[0],):
            raise ValueError(f"labels must be (B,) = ({prediction.shape[0]},), got {tuple(labels.shape)}")
        aux = [task_loss(lg.squeeze(-1) if cfg.task == "regression" else lg, labels, cfg.task)
               for s in spaces for lg in s.logits]
        aux_total = torch.stack(aux).sum() if cfg.aux_loss == "sum" else torch.stack(aux).mean()
        losses = {"task": task_loss(prediction, labels, cfg.task) + aux_total}
        classes = triplet_classes(labels, cfg.task, cfg.triplet_classes)
        total = losses["task"]
        if dec is not None:
            losses.update(rec=dec.rec, cyc=dec.cyc, ort=dec.ort,
                          mar=cross_modal_triplet_loss(homo.pooled, classes, cfg.alpha))
            decoupling = losses["rec"] + losses["cyc"] + cfg.gamma * (losses["mar"] + losses["ort"])
            total = total + cfg.lambda_dec * decoupling
        for name, space in (("homo", homo), ("hetero", hetero)):
            if space is None:
                continue
            if space.dtl is not None:
                losses[f"dtl_{name}"] = space.dtl
                total = total + cfg.lambda_dtl * space.dtl
            if space.recon is not None:
                losses[f"ctr_{name}"] = cross_modal_triplet_loss(space.recon, classes, cfg.alpha)
                total = total + cfg.lambda_dic * losses[f"ctr_{name}"]
        losses["total"] = total
        return losses
