"""Megatron-Core learner for the model families (`prco_mega.families`): the layout rules
(`layout`) and the start of a layout (`parallel`), what the families' models share (`model`,
`attention`, `mrope`) and the provider that asks the family registry (`provider`), packing and the
micro-batch planner (`packing`, `vision_inputs`), the model forward and log-probs (`forward`), the
loss paths (`loss_paths`, the fused `loss_head`) run through Megatron's schedules (`train_step`),
the train/rollout mismatch (`mismatch`), optimizer and LR schedule (`optim`), distributed
checkpoints (`checkpoint`), the `learner:` config section (`config`), and the loop's view of all
of it (`policy`). `layout` and `config` import no torch: the planner and config loading read
them."""
