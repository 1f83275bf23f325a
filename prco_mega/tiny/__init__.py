"""The tiny CPU model: its tokenizer, the tiny checkpoint build and the warm start's
demonstrations."""
from prco_mega.tiny import checkpoint, tokenizer

# The checkpoint build's old home, kept until runtime/warm_start.py imports it from
# `tiny.checkpoint` (issue 27).
tokenizer.make_tiny_checkpoint = checkpoint.make_tiny_checkpoint
