"""Role prompts: the chat format the model was trained on, and templates users can replace."""
import pytest

from prco_mega.roles import PromptSet, render_chat
from prco_mega.types import Role, Task


def _task(images=1, choices=None):
    return Task(uid="t0", question="How many red circles?", answer="3",
                images=[object()] * images, choices=choices)


def test_chat_format_matches_qwen25vl():
    text = render_chat("SYS", "hello", num_images=1)
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>hello<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_observer_sees_image_and_question_but_no_caption():
    p = PromptSet().observer(_task())
    assert p.role is Role.OBSERVER and len(p.images) == 1
    assert p.text.count("<|image_pad|>") == 1
    assert "How many red circles?" in p.text


def test_solver_warmup_drops_the_image_but_keeps_the_caption():
    prompts = PromptSet()
    warm = prompts.solver(_task(), "- 3 red circles", with_image=False)
    late = prompts.solver(_task(), "- 3 red circles", with_image=True)
    assert warm.images == [] and "<|image_pad|>" not in warm.text
    assert len(late.images) == 1 and late.text.count("<|image_pad|>") == 1
    for p in (warm, late):
        assert "- 3 red circles" in p.text and "\\boxed{}" in p.text


def test_choices_are_listed_with_letters():
    p = PromptSet().single(_task(choices=["2", "3"]))
    assert "A. 2\nB. 3" in p.text


def test_user_template_replaces_wording(tmp_path):
    f = tmp_path / "obs.txt"
    f.write_text("Describe for: ${question}")
    p = PromptSet(paths={Role.OBSERVER: str(f)}).observer(_task())
    assert "Describe for: How many red circles?" in p.text


@pytest.mark.parametrize("body,needle", [("no placeholders", "missing placeholders ['question']"),
                                         ("${question} ${answer}", "unknown placeholders ['answer']")])
def test_bad_template_is_refused_at_load(tmp_path, body, needle):
    f = tmp_path / "bad.txt"
    f.write_text(body)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        PromptSet(paths={Role.OBSERVER: str(f)})


def test_solver_template_must_take_the_caption(tmp_path):
    f = tmp_path / "solver.txt"
    f.write_text("${question}")
    with pytest.raises(ValueError, match="caption"):
        PromptSet(paths={Role.SOLVER: str(f)})
