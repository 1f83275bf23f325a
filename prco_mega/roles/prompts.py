"""Render role prompts from template files.

Templates use `string.Template` placeholders (`${question}`, `${caption}`, `${choices}`) rather
than `str.format`, because prompts about LaTeX answers are full of literal braces (`\\boxed{}`).
Users replace the wording by pointing the config at their own files; the placeholders a role needs
are checked when the file is loaded, not when the first rollout fails.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prco_mega.types import Role, Task

TEMPLATE_DIR = Path(__file__).parent / "templates"
SHIPPED = {Role.OBSERVER: "observer.txt", Role.SOLVER: "solver.txt", Role.SINGLE: "single.txt"}
REQUIRED = {Role.OBSERVER: {"question"}, Role.SOLVER: {"question", "caption"},
            Role.SINGLE: {"question"}}
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass
class Prompt:
    """A rendered chat prompt plus the images its placeholders stand for."""

    role: Role
    text: str
    images: list[Any] = field(default_factory=list)


def render_chat(system: str, user: str, num_images: int) -> str:
    """Qwen2.5-VL chat format, ending with the assistant header (generation starts there).

    Each image is one `<|image_pad|>` here; the processor/engine expands it to the image's number
    of merged patches.
    """
    vision = IMAGE_PLACEHOLDER * num_images
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{vision}{user}<|im_end|>\n<|im_start|>assistant\n")


def _placeholders(template: string.Template) -> set[str]:
    names = set()
    for match in template.pattern.finditer(template.template):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def load_template(role: Role, path: str | Path | None = None) -> string.Template:
    """Read a role's template (shipped one if `path` is None) and check its placeholders."""
    file = Path(path) if path else TEMPLATE_DIR / SHIPPED[role]
    if not file.is_file():
        raise ValueError(f"{role.name.lower()} template {str(file)!r} does not exist")
    template = string.Template(file.read_text())
    names = _placeholders(template)
    missing = REQUIRED[role] - names
    unknown = names - {"question", "caption", "choices"}
    if missing or unknown:
        raise ValueError(f"{role.name.lower()} template {str(file)!r}: missing placeholders "
                         f"{sorted(missing)}, unknown placeholders {sorted(unknown)}")
    return template


def format_choices(choices: list[str] | None) -> str:
    """`A. x\\nB. y` block appended to the question for multiple-choice tasks."""
    if not choices:
        return ""
    return "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


class PromptSet:
    """The three role prompts of one run."""

    def __init__(self, system: str = "You are a helpful assistant.",
                 paths: dict[Role, str | None] | None = None):
        paths = paths or {}
        self.system = system
        self.templates = {role: load_template(role, paths.get(role)) for role in SHIPPED}

    def _user_text(self, role: Role, task: Task, caption: str = "") -> str:
        question = task.question
        choices = format_choices(task.choices)
        if choices and "choices" not in _placeholders(self.templates[role]):
            question = f"{question}\n{choices}"
        return self.templates[role].substitute(question=question, caption=caption.strip(),
                                               choices=choices).strip()

    def observer(self, task: Task) -> Prompt:
        text = render_chat(self.system, self._user_text(Role.OBSERVER, task), len(task.images))
        return Prompt(Role.OBSERVER, text, list(task.images))

    def solver(self, task: Task, caption: str, with_image: bool) -> Prompt:
        """Solver prompt; `with_image=False` during the caption-first warm-up."""
        images = list(task.images) if with_image else []
        text = render_chat(self.system, self._user_text(Role.SOLVER, task, caption), len(images))
        return Prompt(Role.SOLVER, text, images)

    def single(self, task: Task) -> Prompt:
        text = render_chat(self.system, self._user_text(Role.SINGLE, task), len(task.images))
        return Prompt(Role.SINGLE, text, list(task.images))
