"""Megatron <-> Hugging Face weights: the mapping table as data (`mapping`), checkpoint load and
export at any TP/PP (`hf_io`). Heavy imports stay inside the modules."""
