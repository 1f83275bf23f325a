"""The trained tokenizer and processor: lossless text, Qwen2.5-VL's specials and chat format, and
files that transformers loads back (the same files vLLM reads)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prco_mega.families import family
from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.tokenizer import (CHAT_TEMPLATE, SPECIAL_TOKENS, demo_corpus,
                                      special_token_ids, train_tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(demo_corpus(2000, seed=0))


@pytest.fixture(scope="module")
def saved_dir(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(out)
    family("qwen2_5_vl").tiny.save_processor(out, tokenizer, CHAT_TEMPLATE)
    return out


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_corpus_words_are_single_pieces(tokenizer):
    """Training learned the corpus: frequent words cost one token, not one per character."""
    text = " how many red square above the triangle"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.split())


def test_special_tokens_are_single_ids_even_inside_text(tokenizer):
    special = special_token_ids(tokenizer)
    ids = [getattr(special, f) for f in ("endoftext", "im_start", "im_end", "vision_start",
                                         "vision_end", "image_pad", "video_pad")]
    assert len(set(ids)) == 7
    assert tokenizer.convert_ids_to_tokens(ids) == list(SPECIAL_TOKENS)
    enc = tokenizer.encode("two<|image_pad|>three<|im_end|>", add_special_tokens=False)
    assert special.image_pad in enc and enc[-1] == special.im_end
    assert tokenizer.eos_token_id == special.im_end
    assert tokenizer.pad_token_id == special.endoftext
    # Specials never leak into decoded responses.
    assert tokenizer.decode(enc, skip_special_tokens=True) == "twothree"


def test_vocab_is_padded_and_every_id_decodes(tokenizer):
    assert len(tokenizer) % 16 == 0
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert None not in tokens and len(set(tokens)) == len(tokenizer)


def test_chat_template_renders_qwen25vl_format(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "How many?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n")


def test_saved_files_load_back_with_auto_classes(tokenizer, saved_dir):
    from transformers import AutoProcessor, AutoTokenizer

    text = "Count the 12 squares.\n<|im_start|>user\nWhich is largest?"
    assert AutoTokenizer.from_pretrained(saved_dir).encode(text) == tokenizer.encode(text)
    processor = AutoProcessor.from_pretrained(saved_dir)
    assert processor.video_processor is not None
    from PIL import Image

    image = Image.fromarray(np.zeros((56, 84, 3), dtype=np.uint8))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        tokenize=False, add_generation_prompt=True)
    out = processor(text=[prompt], images=[image], return_tensors="pt")
    # 56x84 px -> 4x6 patches of 14 px -> 2x3 merged tokens.
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    pad = special_token_ids(tokenizer).image_pad
    assert out["input_ids"][0].tolist().count(pad) == 6


def test_tiny_checkpoint_vocab_and_specials_match_the_tokenizer(tmp_path):
    out = make_tiny_checkpoint(tmp_path / "tiny", demo_corpus(1000, seed=1), seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    special = special_token_ids(tok)
    assert cfg["text_config"]["vocab_size"] == len(tok)
    assert cfg["image_token_id"] == special.image_pad
    assert cfg["vision_start_token_id"] == special.vision_start
    assert cfg["text_config"]["eos_token_id"] == special.im_end
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()


def test_hf_tokenizer_splits_exactly_like_sentencepiece():
    """The converted BPE (vocab + derived merges) gives sentencepiece's own ids, on corpus text
    and on text it never saw (byte fallback, double spaces, newlines)."""
    import sentencepiece as spm

    from prco_mega.tiny.tokenizer import sentencepiece_to_hf, train_sentencepiece

    corpus = demo_corpus(1500, seed=0)
    proto = train_sentencepiece(corpus, 600)
    sp, hf = spm.SentencePieceProcessor(model_proto=proto), sentencepiece_to_hf(proto)
    samples = corpus[:300] + demo_corpus(300, seed=1) + [
        "héllo wörld ☃ 12.5%", "  two  spaces\n\nnew line", "triangles,squares;circle", ""]
    for text in samples:
        assert hf.encode(text).ids == sp.encode(text), text
