"""Megatron-Core learner for the Qwen2.5-VL family: parallel layout and validation (`parallel`),
model provider (`model`, `mrope`), packing and the micro-batch planner (`packing`, `vision_inputs`),
the model forward and log-probs (`forward`), the loss paths (`loss_paths`, the fused `loss_head`)
run through Megatron's schedules (`train_step`), the train/rollout mismatch (`mismatch`), optimizer
and LR schedule (`optim`), distributed checkpoints (`checkpoint`), and the loop's view of all of it
(`policy`). Megatron is imported inside these modules only."""
