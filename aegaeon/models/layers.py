"""The building blocks of a Llama-family layer, as plain functions over tensors.

Each matches the Hugging Face reference numerics (norms in float32, rotary
tables in float32, the half-split rotary convention of `rotate_half`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotary_tables(
    positions: torch.Tensor, head_dim: int, theta: float, linear_factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape positions.shape + (head_dim,)."""
    inv_freq = 1.0 / (
        theta
        ** (
            torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
            / head_dim
        )
    )
    angles = (positions.float() / linear_factor).unsqueeze(-1) * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., tokens, heads, head_dim]; cos/sin: [..., tokens, head_dim]."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def swiglu_mlp(
    x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Attention of padded queries over keys gathered from KV blocks.

    q: [B, Q, H, D]; k, v: [B, C, KVH, D]; mask: [B, Q, C] (True = may attend).
    Grouped-query heads share their KV head. Returns [B, Q, H * D].
    """
    batch, queries, heads, dim = q.shape
    group = heads // k.shape[2]
    if group > 1:
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask.unsqueeze(1)
    )
    return out.transpose(1, 2).reshape(batch, queries, heads * dim)


def ragged_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor,
    key_sequence: torch.Tensor,
) -> torch.Tensor:
    """Attention of one query per sequence over the keys of all sequences laid back to back.

    q: [B, H, D]; k, v: [T, KVH, D], sequence 0's keys first; key_lengths: [B]
    (each >= 1, summing to T); key_sequence: [T], the sequence of each key.
    Grouped-query heads share their KV head. Work is proportional to T, the
    summed context, not to B x the longest one. Scores and the softmax run in
    float32. Returns [B, H * D] in q's dtype.
    """
    batch, heads, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    queries = (
        q.float().view(batch, kv_heads, group, dim).index_select(0, key_sequence)
    )  # [T, KVH, G, D]
    scores = torch.einsum("tkgd,tkd->tkg", queries, k.float()).mul_(dim**-0.5)
    peak = torch.segment_reduce(scores, "max", lengths=key_lengths, axis=0)  # [B, KVH, G]
    weights = scores.sub_(peak.index_select(0, key_sequence)).exp_()
    total = torch.segment_reduce(weights, "sum", lengths=key_lengths, axis=0)
    out = torch.zeros(batch, kv_heads, group, dim, device=q.device)
    out.index_add_(0, key_sequence, weights.unsqueeze(-1) * v.float().unsqueeze(2))
    return (out / total.unsqueeze(-1)).reshape(batch, heads * dim).to(q.dtype)
