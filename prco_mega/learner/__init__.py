"""Megatron-Core learner for the Qwen2.5-VL family: parallel layout (`parallel`), model provider
(`model`), per-token log-probs (`logprobs`). Megatron is imported inside these modules only."""
