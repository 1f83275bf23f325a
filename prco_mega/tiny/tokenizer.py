"""A tokenizer and processor for the tiny Qwen2.5-VL, trained here because no hub is reachable.

`train_tokenizer` trains a sentencepiece BPE model in-process on a corpus (any iterable of
strings) and converts it to a Hugging Face fast tokenizer (`tokenizer.json`) carrying Qwen2.5-VL's
seven special tokens and a Qwen2.5-VL-style chat template, so transformers, vLLM and Megatron all
read the same files. The family's processor saver (`TinyBuilder.save_processor`) adds the image +
video processor configs that `AutoProcessor.from_pretrained` needs;
`tiny.checkpoint.make_tiny_checkpoint` writes a complete model directory.

Text handling is lossless by construction: no normalisation, no dummy prefix, spaces become "▁"
and unknown characters fall back to bytes, so `decode(encode(s)) == s` for any string (except the
literal spellings of the byte pieces, e.g. the six characters "<0x0A>").
"""
from __future__ import annotations

import io
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from prco_mega.families.qwen2_5_vl.tiny import SpecialTokenIds

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens, in `SpecialTokenIds` field order."""

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-VL's chat format: a default system turn, one <|im_start|>role\n...<|im_end|>\n block per
# message, each image as <|vision_start|><|image_pad|><|vision_end|> where it occurs in the content
# (the processor later expands the single pad to one pad per merged patch).
CHAT_TEMPLATE = (
    "{%- set image_block = '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- set video_block = '<|vision_start|><|video_pad|><|vision_end|>' -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{ image_block }}"
    "{%- elif part['type'] == 'video' -%}{{ video_block }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_WORDS = ("the a one two three four five six seven red blue green yellow circle square triangle "
          "star bar chart left right above below count how many is are there of in on and which "
          "largest smallest value answer caption image shows question total more less than").split()


def demo_corpus(num_sentences: int = 3000, seed: int = 0) -> list[str]:
    """Short English-like sentences with digits and punctuation, for tests and demos."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 120)))
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","])
        if rng.random() < 0.1:
            sentence += " \\boxed{%d}" % rng.randint(0, 50)
        out.append(sentence)
    return out


def train_sentencepiece(corpus: Iterable[str], vocab_size: int) -> bytes:
    """Train a BPE sentencepiece model in-process; returns the serialized model proto.

    BPE rather than unigram: on the small, repetitive synthetic corpus the unigram trainer stops
    at ~250 pieces and splits frequent words ("or|ang|e"), so the tiny model has to copy three
    tokens where one would do; BPE keeps every frequent word whole. `vocab_size` counts <unk> and
    the 256 byte pieces, so it must be > 257 + a few pieces. Tiny corpora may yield fewer pieces
    than asked (`hard_vocab_limit=False`).
    """
    if vocab_size < 300:
        raise ValueError(f"sentencepiece vocab_size ({vocab_size}) must be >= 300 (it holds the "
                         "256 byte-fallback pieces)")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=writer, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=["\n"], unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    return writer.getvalue()


def bpe_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """The merge list that rebuilds sentencepiece BPE `pieces` (listed in merge order).

    A piece can be produced by any split into two known pieces; every such split becomes a merge,
    ranked by the piece it produces and then by its parts, which reproduces sentencepiece's
    greedy highest-score-first merging (checked against sentencepiece in the tests).
    """
    rank = {piece: i for i, piece in enumerate(pieces)}
    merges = []
    for piece in pieces:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in rank and right in rank:
                merges.append((rank[piece], rank[left], rank[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


def sentencepiece_to_hf(model_proto: bytes):
    """Build a `tokenizers.Tokenizer` equivalent to a BPE sentencepiece model (lossless)."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise ValueError(f"only BPE sentencepiece models convert here, got model_type "
                         f"{proto.trainer_spec.model_type}")
    pieces = [p.piece for p in proto.pieces]
    # Merges only between normal pieces: byte pieces (<0x41>) and <unk> are never merge operands.
    normal = [p.piece for p in proto.pieces if p.type in (sp_pb2.ModelProto.SentencePiece.NORMAL,
                                                          sp_pb2.ModelProto.SentencePiece.USER_DEFINED)]
    tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, bpe_merges(normal),
                               byte_fallback=True, unk_token=pieces[proto.trainer_spec.unk_id]))
    # "▁" marks a space; pieces never cross a word start, as in sentencepiece's own training.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 505,
                    pad_to_multiple_of: int = 16) -> PreTrainedTokenizerFast:
    """Train on `corpus` and return a fast tokenizer with Qwen2.5-VL's specials and chat template.

    Layout: sentencepiece ids first, then the seven specials (in `SPECIAL_TOKENS` order), then
    `<|reserved_k|>` fillers up to a multiple of `pad_to_multiple_of`, so len(tokenizer) equals the
    model's vocab size and every id the model can sample decodes.
    """
    from transformers import PreTrainedTokenizerFast

    tok = sentencepiece_to_hf(train_sentencepiece(corpus, vocab_size))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    size = tok.get_vocab_size(with_added_tokens=True)
    fill = -size % pad_to_multiple_of
    tok.add_special_tokens([AddedToken(f"<|reserved_{k}|>", special=True, normalized=False)
                            for k in range(fill)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None,
        extra_special_tokens=[t for t in SPECIAL_TOKENS
                              if t not in ("<|im_end|>", "<|endoftext|>")],
        chat_template=CHAT_TEMPLATE, model_max_length=32768, clean_up_tokenization_spaces=False,
    )


def special_token_ids(tokenizer) -> SpecialTokenIds:
    """The ids of Qwen2.5-VL's seven special tokens in `tokenizer` (each must be a single id)."""
    ids = []
    for token in SPECIAL_TOKENS:
        enc = tokenizer.encode(token, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"special token {token!r} encodes to {enc}, not a single id")
        ids.append(enc[0])
    return SpecialTokenIds(*ids)
