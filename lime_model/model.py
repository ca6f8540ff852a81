"""The networks, bottom-up in one file: embeddings -> blocks (XOR, read, causal) -> models.

Notation (DESIGN.md §1): a user's history ``h_1..h_n`` (oldest first), ``B``
users, ``d = d_model``, ``H`` heads of ``d_h = d / H``, ``ell`` learned links
``L`` (``ell x d``), ``C`` candidates.

Histories are RIGHT-ALIGNED ``(B, n)`` int64 tensors of vocabulary indices:
padding index 0 on the left, the newest item last.  Timestamps, when given,
are ``(B, n)`` float64 epoch seconds aligned with the history (padding cells
are ignored).

* :class:`LimeModel` (``lime-xor`` and ``lime-mha``): the user encoder turns a
  history into personalised links ``L_P`` (``ell x d``); candidates attend to
  the raw static links, so their link weights are user-independent and cached
  (:meth:`LimeModel.candidate_tables`).  The XOR encoder is computed as two
  rectangular attentions per block, never as an ``(ell + n)^2`` matrix; the
  dense masked reference is ``lime_model.reference``.
* :class:`SASRecModel`: the reference, causal self-attention over the history,
  dot-product scoring, trained on every position of a sequence at once.
* :class:`PopularityModel`: training counts, the cold-start fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.scoring import fold_candidates


def recency_positions(n: int, device: torch.device) -> Tensor:
    """``(n,)`` int64: for right-aligned columns, 0 for the newest column, n-1 for the oldest."""
    return torch.arange(n - 1, -1, -1, device=device)


def time_gap_buckets(timestamps: Tensor, n_buckets: int) -> Tensor:
    """``(B, n)`` float64 epoch seconds -> ``(B, n)`` int64 buckets of ``log2(1 + t_newest - t_i)``.

    The newest history item (the last column) is the reference, so the time of
    the item being predicted never leaks into the features.
    """
    gap = (timestamps[:, -1:] - timestamps).clamp_min(0.0)  # (B, n) seconds
    return torch.floor(torch.log2(gap + 1.0)).long().clamp_(0, n_buckets - 1)  # (B, n)


class HistoryEmbedding(nn.Module):
    """``X_E = Emb(h) + P(recency position) [+ T(time-gap bucket)]``; ``Emb`` is shared with candidates."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.num_items, cfg.d_model, padding_idx=0)
        self.position = nn.Embedding(cfg.max_history, cfg.d_model)
        self.time_gap = nn.Embedding(cfg.time_gap_buckets, cfg.d_model) if cfg.use_time_gaps else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, history: Tensor, timestamps: Tensor | None) -> tuple[Tensor, Tensor]:
        """history ``(B, n)`` int64, timestamps ``(B, n)`` float64 | None ->
        (``X_E`` ``(B, n, d)``, key_valid ``(B, n)`` bool, False on padding)."""
        if history.dim() != 2 or history.dtype != torch.int64:
            raise ValueError(f"history must be a (B, n) int64 tensor, got {tuple(history.shape)} "
                             f"{history.dtype}")
        n = history.shape[1]
        if n > self.cfg.max_history:
            raise ValueError(f"history has {n} columns, the model accepts at most max_history="
                             f"{self.cfg.max_history}; keep the newest items")
        x = self.item(history) + self.position(recency_positions(n, history.device))  # (B, n, d)
        if self.time_gap is not None:
            if timestamps is None:
                raise ValueError("this model uses time gaps (use_time_gaps=True): pass timestamps")
            if timestamps.shape != history.shape:
                raise ValueError(f"timestamps shape {tuple(timestamps.shape)} != history shape "
                                 f"{tuple(history.shape)}")
            x = x + self.time_gap(time_gap_buckets(timestamps, self.cfg.time_gap_buckets))  # (B, n, d)
        return self.dropout(x), history != 0


# Links <- history folds the history's K and V into the link side from this many history
# columns on (HSTUBlock.folds): below it, the per-user widening costs more than it saves.
FOLD_MIN_KEYS = 256
# The same for queries shared by the whole batch (the first block's links, L): their widening is
# paid once per call, only W_v per user, so folding pays earlier (from ~ell keys in FLOPs; the
# measured thresholds are in docs/model.md, "The networks").
FOLD_MIN_KEYS_SHARED = 64


class HSTUBlock(nn.Module):
    """Pre-LayerNorm, one fused projection to U, Q, K, V, softmax attention,
    ``x + W_o(SiLU(U) * LayerNorm(attn))``; no separate feed-forward.

    The parameters and the shared steps; which queries see which keys is each subclass's
    ``forward``: :class:`XorBlock`, :class:`ReadBlock` (LIME) and :class:`CausalBlock` (SASRec).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.d = cfg.d_model
        self.norm = nn.LayerNorm(cfg.d_model)
        self.uqkv = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def project(self, x: Tensor, parts: str = "uqkv") -> list[Tensor]:
        """x ``(B, m, d)`` -> the requested parts of U, Q, K, V (e.g. ``"kv"``), each ``(B, m, d)``."""
        return self.project_normed(self.norm(x), parts)

    def project_normed(self, xn: Tensor, parts: str) -> list[Tensor]:
        """xn = ``norm(x)`` ``(B, m, d)`` -> the requested parts of U, Q, K, V, each ``(B, m, d)``.

        One GEMM per part against a slice of the fused weight: the same FLOPs as the fused
        GEMM, but contiguous outputs (cheaper element-wise ops after), and parts nobody reads
        are never computed.
        """
        w, b, d = self.uqkv.weight, self.uqkv.bias, self.d
        return [F.linear(xn, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d])
                for i in ("uqkv".index(p) for p in parts)]  # len(parts) x (B, m, d)

    def attend_folded(self, q: Tensor, xn: Tensor, key_mask: Tensor | None) -> Tensor:
        """Few queries over many keys, without computing the keys' K and V.

        q ``(B or 1, m, d)`` projected queries, xn ``(B, n, d)`` = ``norm(x)`` of the key tokens,
        key_mask ``(B, 1, 1, n)`` bool | None -> merged attention output ``(B, m, d)``.

        Per head ``h``, with ``k_j = xn_j W_k^T + b_k`` and ``v_j = xn_j W_v^T + b_v``:
        ``q^h . k_j^h = (q^h W_k^h) . xn_j + q^h . b_k^h`` -- the last term is the same for every
        key and cancels in the softmax -- and, the weights summing to one,
        ``sum_j p_j v_j^h = (sum_j p_j xn_j) W_v^{hT} + b_v^h``.  So one attention of ``H*m``
        queries of width ``d`` over ``xn`` itself replaces the two ``n x d x d`` GEMMs: cheaper
        for long histories (:meth:`folds`), and equal to the plain form to float tolerance.
        """
        h, d = self.n_heads, self.d
        d_h = d // h
        batch, m = xn.shape[0], q.shape[1]
        w, b = self.uqkv.weight, self.uqkv.bias
        w_k = w[2 * d:3 * d].view(h, d_h, d)  # (H, d_h, d)
        w_v = w[3 * d:4 * d].view(h, d_h, d)  # (H, d_h, d)
        q_wide = self.heads(q) @ w_k  # (B|1, H, m, d)
        q_wide = q_wide.reshape(q.shape[0], 1, h * m, d).expand(batch, -1, -1, -1)  # (B, 1, H*m, d)
        keys = xn[:, None]  # (B, 1, n, d): keys and values alike
        mixed = F.scaled_dot_product_attention(q_wide, keys, keys, attn_mask=key_mask,
                                               scale=d_h ** -0.5)  # (B, 1, H*m, d)
        out = mixed.view(batch, h, m, d) @ w_v.transpose(1, 2) + b[3 * d:4 * d].view(h, 1, d_h)
        return self.merge(out)  # (B, m, d)

    def folds(self, n_queries: int, n_keys: int, shared: bool = False) -> bool:
        """Whether :meth:`attend_folded` is the cheaper form for ``n_queries`` over ``n_keys``.

        Per key it saves ``2 d (d - (H - 1) m)`` multiply-adds (K and V against the wider
        attention); per call it adds ``~2 m d^2`` (widening the queries, then ``W_v``), which runs
        as small per-user matrix products.  So it pays only for long histories (docs/model.md has
        the measured break-even).
        ``shared``: one set of queries for the whole batch (batch 1), widened once per call.
        """
        min_keys = FOLD_MIN_KEYS_SHARED if shared else FOLD_MIN_KEYS
        return (self.n_heads - 1) * n_queries < self.d and n_keys >= min_keys

    def heads(self, x: Tensor) -> Tensor:
        """``(B, m, d)`` -> ``(B, H, m, d_h)``."""
        b, m, _ = x.shape
        return x.view(b, m, self.n_heads, self.d // self.n_heads).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        """``(B, H, m, d_h)`` -> ``(B, m, d)``."""
        b, _, m, _ = x.shape
        return x.transpose(1, 2).reshape(b, m, self.d)

    def read(self, x_q: Tensor, x_kv: Tensor, key_mask: Tensor | None) -> Tensor:
        """Queries read the keys; only the queries are updated.  x_q ``(B or 1, m, d)``, x_kv
        ``(B, n, d)``, key_mask ``(B, 1, 1, n)`` bool (True = real item) or None when no column is
        padding -> new x_q ``(B, m, d)``."""
        u_q, q = self.project(x_q, "uq")  # (B|1, m, d) x 2
        attn = attend_history(self, q, self.norm(x_kv), key_mask)  # (B, m, d)
        return self.output(x_q, u_q, attn)

    def output(self, x: Tensor, u: Tensor, attn: Tensor) -> Tensor:
        """Residual update: x ``(B, m, d)``, u ``(B, m, d)``, attn ``(B, m, d)`` -> ``(B, m, d)``."""
        return x + self.dropout(self.proj(F.silu(u) * self.attn_norm(attn)))


def attend_history(block: HSTUBlock, q_l: Tensor, xn_e: Tensor, key_mask: Tensor | None) -> Tensor:
    """The ``ell x n`` attention links <- history, merged: q_l ``(B or 1, ell, d)``,
    xn_e = ``norm(x_e)`` ``(B, n, d)``, key_mask ``(B, 1, 1, n)`` bool (True = real item) | None
    -> ``(B, ell, d)``.

    For long histories (and few links) the history's K and V are never computed
    (:meth:`HSTUBlock.attend_folded`, :meth:`HSTUBlock.folds`); queries shared by the whole batch
    (batch 1) widen once per call, so they fold from shorter histories on.
    """
    if block.folds(q_l.shape[1], xn_e.shape[1], shared=q_l.shape[0] == 1):
        return block.attend_folded(q_l, xn_e, key_mask)
    k_e, v_e = block.project_normed(xn_e, "kv")  # (B, n, d) x 2
    q = block.heads(q_l).expand(xn_e.shape[0], -1, -1, -1)  # (B, H, ell, d_h)
    return block.merge(F.scaled_dot_product_attention(q, block.heads(k_e), block.heads(v_e),
                                                      attn_mask=key_mask))  # (B, ell, d)


def history_from_shared_links(block: HSTUBlock, xn_e: Tensor, k_l: Tensor, v_l: Tensor) -> Tensor:
    """History <- links when every user has the same links (the first block: links = the parameter L).

    xn_e = ``norm(x_e)`` ``(B, n, d)``; k_l, v_l ``(1, ell, d)`` -> merged attention output ``(B, n, d)``.

    Per head ``h``: ``q_e^h . k_l^h = xn_e (W_q^{hT} k_l^h) + b_q^h . k_l^h``, so the history's
    queries are never formed: a ``(H*ell, d)`` matrix built once per call from the links gives every
    head's logits in one GEMM (the same ``d * H*ell`` multiply-adds per token as Q alone), and the
    values, block-diagonal ``(H*ell, d)``, come out with the heads already merged (no transposes).
    """
    h, d = block.n_heads, block.d
    d_h, ell = d // h, k_l.shape[1]
    w, b = block.uqkv.weight, block.uqkv.bias
    k = block.heads(k_l)[0] * d_h ** -0.5  # (H, ell, d_h), the softmax scale folded in
    w_logit = (k @ w[d:2 * d].view(h, d_h, d)).reshape(h * ell, d)  # (H*ell, d)
    b_logit = (k @ b[d:2 * d].view(h, d_h, 1)).reshape(h * ell)  # (H*ell,): per key, not cancelled
    batch, n = xn_e.shape[:2]
    probs = F.linear(xn_e, w_logit, b_logit).view(batch, n, h, ell).softmax(-1)  # (B, n, H, ell)
    values = torch.block_diag(*block.heads(v_l)[0])  # (H*ell, d): head h's values in its columns
    return probs.view(batch, n, h * ell) @ values  # (B, n, d)


class ReadBlock(HSTUBlock):
    """Links <- history only (:meth:`HSTUBlock.read`): LIME-MHA's blocks, and LIME-XOR's last block,
    whose history update would feed nothing."""

    def forward(self, x_q: Tensor, x_kv: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> (:meth:`HSTUBlock.read` of the queries ``(B, m, d)``, x_kv unchanged)."""
        return self.read(x_q, x_kv, key_mask), x_kv


class XorBlock(HSTUBlock):
    """One XOR-masked block as two rectangular attentions, links <- history and history <- links
    (never history <- history, never the ``(ell + n)^2`` matrix; ``lime_model.reference`` has the
    dense masked form)."""

    def forward(self, x_l: Tensor, x_e: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """x_l ``(B or 1, ell, d)``, x_e ``(B, n, d)``, key_mask ``(B, 1, 1, n)`` | None ->
        (x_l ``(B, ell, d)``, x_e ``(B, n, d)``).

        Links are never padding, so the history <- links attention needs no mask.  Links shared by
        the batch (batch 1, e.g. the parameter ``L`` in the first block) are projected once per
        call, never per user.
        """
        u_l, q_l, k_l, v_l = self.project(x_l)  # (B|1, ell, d) x 4
        xn_e = self.norm(x_e)  # (B, n, d)
        a_l = attend_history(self, q_l, xn_e, key_mask)  # (B, ell, d)
        if x_l.shape[0] == 1:
            (u_e,) = self.project_normed(xn_e, "u")  # (B, n, d)
            a_e = history_from_shared_links(self, xn_e, k_l, v_l)  # (B, n, d)
        else:
            batch = x_e.shape[0]
            u_e, q_e = self.project_normed(xn_e, "uq")  # (B, n, d) x 2
            a_e = self.merge(F.scaled_dot_product_attention(
                self.heads(q_e), self.heads(k_l).expand(batch, -1, -1, -1),
                self.heads(v_l).expand(batch, -1, -1, -1)))  # (B, n, d)
        return self.output(x_l, u_l, a_l), self.output(x_e, u_e, a_e)


class CausalBlock(HSTUBlock):
    """SASRec's block: every position reads itself and the positions before it."""

    def forward(self, x: Tensor) -> Tensor:
        """x ``(B, n, d)`` left-aligned -> ``(B, n, d)``.  Right padding is never a key of a real
        position under the causal mask, so no padding mask is needed."""
        u, q, k, v = self.project(x)  # (B, n, d) x 4
        attn = F.scaled_dot_product_attention(self.heads(q), self.heads(k), self.heads(v),
                                              is_causal=True)  # (B, H, n, d_h)
        return self.output(x, u, self.merge(attn))  # (B, n, d)


@dataclass(frozen=True)
class CandidateTables:
    """Per-candidate quantities stored in ``candidate_link_weights`` (user-independent).

    link_weights ``(C, H*ell)`` float32: per head, softmax over the ``ell`` static links,
    head-major (column ``h * ell + k``).
    cand_vec ``(C, d)`` float32: ``t'_c``, the candidate vector with the output projection folded in.
    bias ``(C,)`` float32: ``b_c``.
    """

    link_weights: Tensor
    cand_vec: Tensor
    bias: Tensor


class RoutingLinear(nn.Linear):
    """A candidate-side routing map (candidate queries, link keys): a plain linear map, initialised
    at unit gain rather than the blocks' small scale (:func:`init_module`)."""


class IdentityLinear(nn.Linear):
    """A square map on the scoring path (the link values ``V``, the output ``W_o``), initialised at
    the identity (:func:`init_module`)."""


class LimeModel(nn.Module):
    """LIME-XOR (``cfg.model == "lime-xor"``) or LIME-MHA (``"lime-mha"``).

    User side: ``encode_links`` -> ``L_P`` ``(B, ell, d)``; ``link_values`` -> ``V(L_P)``.
    Candidate side: ``W_c^h = softmax_k((t_c Q^h) . (L K^h)_k / sqrt(d_h))`` with keys
    from the raw parameter ``L``; ``u_c = concat_h(sum_k W_c^h[k] V^h(L_P)_k)``;
    ``score = <W_o u_c + b_o, t_c> + beta_c = <u_c, t'_c> + b_c``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.is_lime:
            raise ValueError(f"LimeModel needs model 'lime-xor' or 'lime-mha', got {cfg.model!r}")
        self.cfg = cfg
        d = cfg.d_model
        self.embed = HistoryEmbedding(cfg)
        self.links = nn.Parameter(torch.empty(cfg.n_links, d))  # L (ell, d)
        # LIME-XOR: XOR blocks, then one that only reads (the history's last update feeds nothing).
        n_xor = cfg.n_layers - 1 if cfg.model == "lime-xor" else 0
        self.blocks = nn.ModuleList([XorBlock(cfg) for _ in range(n_xor)]
                                    + [ReadBlock(cfg) for _ in range(cfg.n_layers - n_xor)])
        self.final_norm = nn.LayerNorm(d)
        # candidate side
        self.cand_norm = nn.LayerNorm(d)
        self.cand_query = RoutingLinear(d, d, bias=False)
        self.link_norm = nn.LayerNorm(d)
        self.link_key = RoutingLinear(d, d, bias=False)
        self.value = IdentityLinear(d, d)
        self.out = IdentityLinear(d, d)
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items))
        init_weights(self)

    def link_blocks(self) -> list[HSTUBlock]:
        """The blocks in order.  ``nn.ModuleList`` types its items as plain ``nn.Module``; ``__init__``
        puts only :class:`XorBlock` and :class:`ReadBlock` in it."""
        return [cast(HSTUBlock, block) for block in self.blocks]

    # ---- user side -------------------------------------------------------------------------
    def encode_links(self, history: Tensor, timestamps: Tensor | None) -> Tensor:
        """history ``(B, n)`` int64 right-aligned, timestamps ``(B, n)`` float64 | None
        -> ``L_P`` ``(B, ell, d)``.  Every row needs at least one real item."""
        x_e, valid = self.embed(history, timestamps)  # (B, n, d), (B, n)
        key_mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, n)
        x_l = self.links[None]  # (1, ell, d): identical for every user until the first block
        for block in self.blocks:
            x_l, x_e = block(x_l, x_e, key_mask)  # (B, ell, d), (B, n, d)
        if self.cfg.newest_to_links:
            # Right-aligned: the last column is every row's newest item.  Its residual stream gives the
            # links what SASRec's user vector has, the item the user took last (docs/model.md).
            x_l = x_l + x_e[:, -1:]  # (B, ell, d)
        return self.final_norm(x_l)  # (B, ell, d)

    def link_values(self, l_p: Tensor) -> Tensor:
        """``L_P`` ``(B, ell, d)`` -> per-user values ``V(L_P)`` ``(B, ell, d)``."""
        return self.value(l_p)

    # ---- candidate side --------------------------------------------------------------------
    def link_keys(self) -> Tensor:
        """``(H, ell, d_h)``: keys of the raw static links (never of ``L_P``)."""
        k = self.link_key(self.link_norm(self.links))  # (ell, d)
        return k.view(self.cfg.n_links, self.cfg.n_heads, self.cfg.head_dim).transpose(0, 1)

    def candidate_queries(self, item_idx: Tensor) -> tuple[Tensor, Tensor]:
        """item_idx ``(C,)`` -> (``t_c`` ``(C, d)``, queries ``(H, C, d_h)``)."""
        t = self.embed.item(item_idx)  # (C, d)
        q = self.cand_query(self.cand_norm(t))  # (C, d)
        return t, q.view(-1, self.cfg.n_heads, self.cfg.head_dim).transpose(0, 1)  # (H, C, d_h)

    def candidate_tables(self, item_idx: Tensor) -> CandidateTables:
        """item_idx ``(C,)`` int64 -> :class:`CandidateTables` (link_weights ``(C, H*ell)``,
        cand_vec ``(C, d)``, bias ``(C,)``), all float32 and user-independent."""
        t, q = self.candidate_queries(item_idx)  # (C, d), (H, C, d_h)
        logits = q @ self.link_keys().transpose(1, 2) / math.sqrt(self.cfg.head_dim)  # (H, C, ell)
        weights = logits.softmax(dim=-1).transpose(0, 1).reshape(len(item_idx), -1)  # (C, H*ell)
        cand_vec = t @ self.out.weight  # (C, d): <W_o u + b_o, t> = <u, t W_o> + <b_o, t>
        bias = t @ self.out.bias + self.item_bias[item_idx]  # (C,)
        return CandidateTables(weights.float(), cand_vec.float(), bias.float())

    # ---- interaction -----------------------------------------------------------------------
    def forward_scores(self, history: Tensor, timestamps: Tensor | None, cand_idx: Tensor) -> Tensor:
        """End-to-end score, computed directly as candidate -> links cross-attention:
        history ``(B, n)``, timestamps ``(B, n)`` | None, cand_idx ``(C,)`` -> ``(B, C)``."""
        values = self.link_values(self.encode_links(history, timestamps))  # (B, ell, d)
        batch = values.shape[0]
        t, q = self.candidate_queries(cand_idx)  # (C, d), (H, C, d_h)
        k = self.link_keys()  # (H, ell, d_h)
        v = values.view(batch, self.cfg.n_links, self.cfg.n_heads, self.cfg.head_dim).transpose(1, 2)
        u = F.scaled_dot_product_attention(q.expand(batch, -1, -1, -1), k.expand(batch, -1, -1, -1),
                                           v)  # (B, H, C, d_h)
        u = u.transpose(1, 2).reshape(batch, len(cand_idx), self.cfg.d_model)  # (B, C, d)
        return (self.out(u) * t).sum(-1) + self.item_bias[cand_idx]  # (B, C)

    def table_scores(self, history: Tensor, timestamps: Tensor | None, cand_idx: Tensor) -> Tensor:
        """Same scores through the cached-table path (one GEMM); used for training and evaluation."""
        values = self.link_values(self.encode_links(history, timestamps))  # (B, ell, d)
        tables = self.candidate_tables(cand_idx)
        folded = fold_candidates(tables.link_weights, tables.cand_vec, self.cfg.n_heads, self.cfg.n_links)
        return values.reshape(values.shape[0], -1) @ folded.T + tables.bias  # (B, C)


def previous_gap_buckets(timestamps: Tensor, valid: Tensor, n_buckets: int) -> Tensor:
    """Left-aligned ``(B, n)`` float64 epoch seconds -> ``(B, n)`` int64 buckets of
    ``log2(1 + t_i - t_{i-1})`` (0 for the first item and for padding).

    Each item is compared with the one before it, never with a later one, so a causal model
    trained on every position sees no timestamp from its own future.
    """
    gap = torch.zeros_like(timestamps)  # (B, n)
    gap[:, 1:] = (timestamps[:, 1:] - timestamps[:, :-1]).clamp_min(0.0)
    buckets = torch.floor(torch.log2(gap + 1.0)).long().clamp_(0, n_buckets - 1)  # (B, n)
    return buckets.masked_fill_(~valid, 0)


class SequenceEmbedding(nn.Module):
    """SASRec's input: ``Emb(h_i) + P(i) [+ T(gap to h_{i-1})]`` for LEFT-ALIGNED sequences, positions
    counted from the oldest item, so the output at position ``i`` is the same whether the sequence
    ends there (inference) or goes on (training on every position)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.num_items, cfg.d_model, padding_idx=0)
        self.position = nn.Embedding(cfg.max_history, cfg.d_model)
        self.time_gap = nn.Embedding(cfg.time_gap_buckets, cfg.d_model) if cfg.use_time_gaps else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, items: Tensor, timestamps: Tensor | None) -> tuple[Tensor, Tensor]:
        """items ``(B, n)`` int64 left-aligned (padding 0 on the right), timestamps ``(B, n)`` | None
        -> (tokens ``(B, n, d)``, valid ``(B, n)`` bool)."""
        n = items.shape[1]
        if n > self.cfg.max_history:
            raise ValueError(f"sequence has {n} columns, the model accepts at most max_history="
                             f"{self.cfg.max_history}; keep the newest items")
        valid = items != 0  # (B, n)
        x = self.item(items) + self.position(torch.arange(n, device=items.device))  # (B, n, d)
        if self.time_gap is not None:
            if timestamps is None:
                raise ValueError("this model uses time gaps (use_time_gaps=True): pass timestamps")
            x = x + self.time_gap(previous_gap_buckets(timestamps, valid, self.cfg.time_gap_buckets))
        return self.dropout(x), valid


def left_align(history: Tensor, other: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Right-aligned history ``(B, n)`` (and a tensor aligned with it, e.g. timestamps) -> the same
    rows left-aligned (padding moved to the right) and each row's length ``(B,)``."""
    n = history.shape[1]
    lengths = (history != 0).sum(1)  # (B,)
    cols = (torch.arange(n, device=history.device)[None] + (n - lengths)[:, None]) % n  # (B, n)
    moved = None if other is None else other.gather(1, cols)
    return history.gather(1, cols), moved, lengths


class SASRecModel(nn.Module):
    """The reference a user would pick instead: causal self-attention over the history (SASRec,
    HSTU-style blocks), user vector = output at the newest item, ``score = <user, Emb(c)> + beta_c``.
    Trained on every position of a sequence in one causal pass (:meth:`encode_sequence`).
    O(n^2) per user."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.model != "sasrec":
            raise ValueError(f"SASRecModel needs model 'sasrec', got {cfg.model!r}")
        self.cfg = cfg
        self.embed = SequenceEmbedding(cfg)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items))
        init_weights(self)

    def last_block(self) -> CausalBlock:
        """The last block.  ``nn.ModuleList`` types its items as plain ``nn.Module``; ``__init__`` puts
        only :class:`CausalBlock` in it."""
        return cast(CausalBlock, self.blocks[-1])

    def encode_sequence(self, items: Tensor, timestamps: Tensor | None) -> Tensor:
        """Training form: left-aligned items ``(B, n)``, timestamps ``(B, n)`` | None -> the user
        vector after every position ``(B, n, d)`` (rows at padding are meaningless)."""
        x, _ = self.embed(items, timestamps)  # (B, n, d)
        for block in self.blocks:
            x = block(x)  # (B, n, d)
        return self.final_norm(x)  # (B, n, d)

    def encode_user(self, history: Tensor, timestamps: Tensor | None) -> Tensor:
        """history ``(B, n)`` right-aligned, timestamps ``(B, n)`` | None -> user vectors ``(B, d)``.

        Only the newest position's output is read, so the last block computes that one query
        (its K and V for every position): the skyline skips its dead work as LIME-XOR does."""
        items, times, lengths = left_align(history, timestamps)  # (B, n), (B, n) | None, (B,)
        x, valid = self.embed(items, times)  # (B, n, d), (B, n)
        for block in self.blocks[:-1]:
            x = block(x)  # (B, n, d)
        rows = torch.arange(len(lengths), device=x.device)
        newest = x[rows, lengths - 1][:, None]  # (B, 1, d)
        key_mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, n)
        out = self.last_block().read(newest, x, key_mask)  # (B, 1, d): the last block, newest query only
        return self.final_norm(out[:, 0])  # (B, d)

    def forward_scores(self, history: Tensor, timestamps: Tensor | None, cand_idx: Tensor) -> Tensor:
        """history ``(B, n)``, timestamps ``(B, n)`` | None, cand_idx ``(C,)`` -> ``(B, C)``."""
        user = self.encode_user(history, timestamps)  # (B, d)
        return self.score_vectors(user, cand_idx)  # (B, C)

    def score_vectors(self, users: Tensor, cand_idx: Tensor) -> Tensor:
        """user vectors ``(R, d)``, cand_idx ``(C,)`` -> ``(R, C)``."""
        return users @ self.embed.item(cand_idx).T + self.item_bias[cand_idx]

    table_scores = forward_scores


class PopularityModel(nn.Module):
    """Scores every candidate by its training interaction count, whatever the history."""

    # a buffer (register_buffer), which nn.Module.__getattr__ would type as Tensor | Module
    counts: Tensor

    def __init__(self, cfg: ModelConfig, counts: Tensor) -> None:
        super().__init__()
        if counts.shape != (cfg.num_items,):
            raise ValueError(f"counts must have shape ({cfg.num_items},), got {tuple(counts.shape)}")
        self.cfg = cfg
        self.register_buffer("counts", counts.to(torch.float32), persistent=False)

    def forward_scores(self, history: Tensor, timestamps: Tensor | None, cand_idx: Tensor) -> Tensor:
        """history ``(B, n)`` (only B is read) -> ``(B, C)`` counts."""
        return self.counts[cand_idx].expand(history.shape[0], -1)  # (B, C)

    table_scores = forward_scores


RankingModel: TypeAlias = LimeModel | SASRecModel | PopularityModel
"""Every network :func:`create_model` makes: each has ``cfg`` and ``table_scores``."""


def init_weights(model: nn.Module) -> None:
    """Initialise every module of ``model`` by its type (:func:`init_module`), in module order."""
    for module in model.modules():
        init_module(module)


def init_module(module: nn.Module) -> None:
    """Unit-gain embeddings, links and candidate routing maps; identity value and output maps; small
    normal block projections; zero biases; unit LayerNorms; the padding row of an item table stays
    zero.  Only the module's own parameters (not its children's)."""
    with torch.no_grad():
        if isinstance(module, IdentityLinear):
            # At the identity a candidate's score starts as the dot product of its embedding with the
            # links it routes to, as SASRec's with its user vector: the item embeddings learn
            # item-to-item structure from the first step instead of through two near-zero maps
            # (docs/model.md, "How the defaults were chosen").
            nn.init.eye_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # RoutingLinear: O(1) link logits from the start, so candidates route to different links early.
            nn.init.normal_(module.weight, std=module.in_features ** -0.5 if isinstance(module, RoutingLinear)
                            else 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Unit-scale tokens: item vectors also score candidates, tiny ones learn slowly.
            nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LimeModel):
            nn.init.normal_(module.links, std=1.0)
            nn.init.zeros_(module.item_bias)
        elif isinstance(module, SASRecModel):
            nn.init.zeros_(module.item_bias)


def create_model(cfg: ModelConfig, popularity: Tensor | None = None) -> RankingModel:
    """A fresh network for ``cfg`` (popularity needs its ``(num_items,)`` counts)."""
    if cfg.is_lime:
        return LimeModel(cfg)
    if cfg.model == "sasrec":
        return SASRecModel(cfg)
    if popularity is None:
        raise ValueError("a popularity model needs its counts")
    return PopularityModel(cfg, popularity)
