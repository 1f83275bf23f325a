"""The tiny CPU model: its tokenizer, the tiny checkpoint build and the warm start's
demonstrations."""
