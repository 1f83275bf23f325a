"""Megatron-Core learner for the Qwen2.5-VL family: parallel layout and validation (`parallel`),
model provider (`model`, `mrope`), packing and the micro-batch planner (`packing`, `vision_inputs`),
loss and log-probs through Megatron's schedules (`train_step`, `loss_head`, `logprobs`), optimizer
and LR schedule (`optim`), distributed checkpoints (`checkpoint`), and the controller's view of all
of it (`policy`). Megatron is imported inside these modules only."""
