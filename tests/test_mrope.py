"""Qwen2.5-VL's 3-D rotary positions on hand-computed examples (the distributed parity test
also checks them against Hugging Face's get_rope_index), and the packed-sequence mask."""
import torch

from prco_mega.learner.mrope import (mrope_position_ids, mrope_positions_1d, packed_causal_mask,
                                     packed_mrope_position_ids)

IMG = 99


def test_text_image_text_positions():
    # grid (1, 4, 6) patches merged 2x2 -> 2 rows x 3 columns of image tokens
    ids = torch.tensor([5, 6, IMG, IMG, IMG, IMG, IMG, IMG, 7])
    pos = mrope_positions_1d(ids, torch.tensor([[1, 4, 6]]), IMG, merge=2)
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 5]  # temporal: start + 0
    assert pos[1].tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 5]  # rows
    assert pos[2].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 5]  # columns; text resumes at 2 + 6/2


def test_back_to_back_images_are_split_by_their_grids():
    ids = torch.tensor([IMG] * 5 + [1])
    pos = mrope_positions_1d(ids, torch.tensor([[1, 2, 2], [1, 4, 4]]), IMG, merge=2)
    assert pos.tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]


def test_batch_rows_take_their_own_images_and_padding_gets_zero():
    ids = torch.tensor([[IMG, 1, 2, 0], [3, IMG, 4, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    pos = mrope_position_ids(ids, torch.tensor([[1, 2, 2], [1, 2, 2]]), IMG, 2, attention_mask=mask)
    assert pos[0].tolist() == [[0, 1, 2, 0], [0, 1, 2, 0]]


def test_packed_sequences_restart_at_zero():
    ids = torch.tensor([1, 2, 3, IMG, 4])
    pos = packed_mrope_position_ids(ids, torch.tensor([0, 3, 5]), torch.tensor([[1, 2, 2]]), IMG, 2)
    assert pos[0].tolist() == [0, 1, 2, 0, 1]


def test_packed_mask_is_causal_inside_each_sequence_only():
    masked = packed_causal_mask(torch.tensor([0, 2, 5]), total=7)[0, 0]
    allowed = (~masked).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0, 0, 0],
                       [0, 0, 1, 1, 0, 0, 0],
                       [0, 0, 1, 1, 1, 0, 0],
                       [0, 0, 0, 0, 0, 1, 0],  # padding past cu_seqlens[-1]: never a real token
                       [0, 0, 0, 0, 0, 1, 1]]
