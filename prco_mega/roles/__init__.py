"""Observer / Solver / single-role prompts: template files rendered in Qwen2.5-VL chat format."""
from prco_mega.roles.prompts import Prompt, PromptSet, render_chat

__all__ = ["Prompt", "PromptSet", "render_chat"]
