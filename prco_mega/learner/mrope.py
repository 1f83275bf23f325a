"""Qwen2.5-VL's 3-D rotary positions (mrope) and packed-sequence attention masks; pure torch.

Positions follow Hugging Face's `Qwen2_5_VLModel.get_rope_index` for images: text tokens count up
by one on all three axes; an image of grid (t, h, w) patches, merged m x m, occupies
t * (h/m) * (w/m) pad tokens whose (temporal, height, width) positions are
`(start + i_t, start + i_h, start + i_w)`; the text after it resumes at `start + max(h, w) / m`.
Every sequence starts at position 0 (so sequences packed back to back keep their own positions).
Videos are not handled (the stack trains on images).
"""
from __future__ import annotations

import bisect

import torch


def image_positions(start: int, grid_thw: tuple[int, int, int], merge: int) -> torch.Tensor:
    """[3, t*(h/m)*(w/m)] positions of one image's merged tokens, offset by `start`."""
    t, h, w = (int(x) for x in grid_thw)
    hm, wm = h // merge, w // merge
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(hm), torch.arange(wm), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def mrope_positions_1d(ids: torch.Tensor, grid_thw: torch.Tensor, image_token_id: int,
                       merge: int) -> torch.Tensor:
    """[3, S] positions of one sequence `ids` [S] whose images have grids `grid_thw` [K, 3].

    Images are matched to runs of `image_token_id` in order; each consumes t*(h/m)*(w/m) tokens,
    so two images back to back are told apart by their token counts.
    """
    ids = ids.reshape(-1)
    seq_len = ids.numel()
    pos = torch.empty(3, seq_len, dtype=torch.long)
    image_idx = torch.nonzero(ids == image_token_id).flatten().tolist()
    i, cur, k = 0, 0, 0
    while i < seq_len:
        nxt = _first_at_or_after(image_idx, i, seq_len)
        pos[:, i:nxt] = torch.arange(cur, cur + nxt - i)
        cur += nxt - i
        if nxt == seq_len:
            break
        if k >= len(grid_thw):
            raise ValueError(f"sequence has more image runs than grids ({len(grid_thw)})")
        block = image_positions(cur, grid_thw[k], merge)
        n = block.shape[1]
        if nxt + n > seq_len or not bool((ids[nxt:nxt + n] == image_token_id).all()):
            raise ValueError(f"image {k} with grid {tuple(int(x) for x in grid_thw[k])} needs "
                             f"{n} consecutive image tokens at position {nxt}")
        pos[:, nxt:nxt + n] = block
        cur += max(int(grid_thw[k][1]), int(grid_thw[k][2])) // merge
        i, k = nxt + n, k + 1
    return pos


def _first_at_or_after(sorted_idx: list[int], i: int, default: int) -> int:
    j = bisect.bisect_left(sorted_idx, i)
    return sorted_idx[j] if j < len(sorted_idx) else default


def images_per_sequence(ids: torch.Tensor, grid_thw: torch.Tensor, image_token_id: int,
                        merge: int) -> list[int]:
    """How many of the grids `grid_thw` [K, 3] (in order) belong to each row of `ids` [B, S]."""
    counts = (ids == image_token_id).sum(dim=1).tolist()
    tokens = (grid_thw.prod(dim=1) // (merge * merge)).tolist() if grid_thw is not None else []
    out, k = [], 0
    for need in counts:
        start = k
        while need > 0:
            if k >= len(tokens):
                raise ValueError(f"{int((ids == image_token_id).sum())} image tokens but grids "
                                 f"cover only {sum(tokens)}")
            need -= tokens[k]
            k += 1
        if need < 0:
            raise ValueError("image tokens in a sequence do not match whole image grids")
        out.append(k - start)
    return out


def mrope_position_ids(ids: torch.Tensor, grid_thw: torch.Tensor | None, image_token_id: int,
                       merge: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[3, B, S] positions for a batch `ids` [B, S]; padded tokens (mask 0) get position 0.

    Equals HF's `get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask)`.
    """
    if grid_thw is None:
        grid_thw = torch.zeros(0, 3, dtype=torch.long)
    out = torch.zeros(3, *ids.shape, dtype=torch.long)
    keep = (attention_mask.bool() if attention_mask is not None
            else torch.ones_like(ids, dtype=torch.bool))
    per_seq = images_per_sequence(torch.where(keep, ids, -1), grid_thw, image_token_id, merge)
    k = 0
    for b, n in enumerate(per_seq):
        out[:, b, keep[b]] = mrope_positions_1d(ids[b][keep[b]], grid_thw[k:k + n], image_token_id,
                                                merge)
        k += n
    return out


def packed_mrope_position_ids(ids: torch.Tensor, cu_seqlens: torch.Tensor,
                              grid_thw: torch.Tensor | None,
                              image_token_id: int, merge: int) -> torch.Tensor:
    """[3, T] positions of packed `ids` [T] split by `cu_seqlens` [N+1]; each restarts at 0."""
    bounds = cu_seqlens.tolist()
    rows = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if grid_thw is None:
        grid_thw = torch.zeros(0, 3, dtype=torch.long)
    parts, k = [], 0
    for row in rows:
        n = images_per_sequence(row[None], grid_thw[k:], image_token_id, merge)[0]
        parts.append(mrope_positions_1d(row, grid_thw[k:k + n], image_token_id, merge))
        k += n
    return torch.cat(parts, dim=1)


def packed_causal_mask(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """[1, 1, T, T] bool mask, True = masked: causal within each packed sequence, none across.

    `cu_seqlens` [N+1] cumulative lengths; tokens past `cu_seqlens[-1]` up to `total` (padding)
    attend causally among themselves, so their rows stay finite and touch no real token.
    """
    total = int(cu_seqlens[-1]) if total is None else total
    seq_id = torch.full((total,), -1, dtype=torch.long)
    bounds = cu_seqlens.tolist()
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        seq_id[a:b] = n
    idx = torch.arange(total)
    same = seq_id[:, None] == seq_id[None, :]
    allowed = same & (idx[None, :] <= idx[:, None])
    return (~allowed)[None, None]
