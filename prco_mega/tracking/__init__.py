"""Experiment tracking: the loggers a run writes its step metrics to (console, metrics.jsonl,
TensorBoard, W&B), the rollouts it saves for reading by eye, and the page that shows them
(`prco-mega inspect`). TensorBoard and W&B are imported inside their loggers only."""
