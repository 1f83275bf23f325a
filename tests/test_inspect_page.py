"""`prco-mega inspect` writes a page a person can judge a step from: rendered in headless
Chromium, every task image decodes, the captions, answers, rewards and advantages are in the DOM,
the trained Solver groups are marked, and the filters keep the tasks they name.

Chromium is Debian's `chromium` package; the fixture installs it with apt-get when it is missing
(as root, as CI runs), and skips the install when it is there. With PRCO_UPDATE_SCREENSHOT=1 the
screenshot is copied to docs/inspect_page.png, the picture in docs/tracking.md."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from rollout_fixtures import scored_block, step_tasks

from prco_mega.cli import main as cli
from prco_mega.config import RunConfig, to_dict
from prco_mega.data.synthetic import held_out_tasks
from prco_mega.rollout.placement import single_engine
from prco_mega.tracking.config import SavedRolloutsSection
from prco_mega.tracking.rollouts import RolloutSaver, read_step, write_eval_records

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("Debian's chromium is not installed and this user cannot apt-get it "
                    "(CI runs as root): apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                   check=True, env=env, timeout=1200, capture_output=True)
    return shutil.which("chromium")



def held_out(cfg: RunConfig):
    return held_out_tasks(cfg.data, cfg.run.seed, cfg.run.eval_tasks)

def browse(chromium: str, url: str, profile: Path, *extra: str) -> str:
    """Chromium's stdout for `url` with a fresh profile."""
    proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with step 10 saved as a run saves it (4 tasks, 4 captions x 3 answers)."""
    root = tmp_path_factory.mktemp("run") / "tiny-prco"
    tasks = step_tasks(8)
    saver = RolloutSaver(SavedRolloutsSection(every=10, tasks=4), root / "rollouts",
                         single_engine(), 8)
    saver.save(10, scored_block(tasks, range(8), step=10))
    return root


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    assert cli(["inspect", str(run_dir)]) == 0
    return run_dir / "inspect" / "step_00000010.html"


def text(s: str) -> str:
    """`s` as a serialised DOM text node shows it (only &, < and > escaped)."""
    return html.escape(s, quote=False)


def _body_data(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', body))


def test_the_page_renders_its_images_captions_and_rewards_in_chromium(chromium, page, run_dir,
                                                                     tmp_path):
    dom = browse(chromium, page.as_uri(), tmp_path / "profile", "--dump-dom")
    saved = read_step(run_dir / "rollouts" / "step_00000010")["tasks"]
    body = _body_data(dom)
    assert body["images-total"] == body["images-loaded"] == str(len(saved)) == "4"
    assert dom.count('src="data:image/png;base64,') == 4  # embedded: the page travels alone
    for task in saved:
        assert text(task["question"]) in dom
        for c in task["captions"]:
            assert text(c["text"]) in dom
            assert f"{c['reward']:.3f}" in dom and f"{c['advantage']:+.3f}" in dom
            for a in c["answers"]:
                assert text(a["text"]) in dom and f"{a['reward']:.3f}" in dom
    trained = sum(c["solver_group_trained"] for t in saved for c in t["captions"])
    assert dom.count("<tr class=\"caption trained\">") == trained > 0
    shot = tmp_path / "inspect.png"
    browse(chromium, page.as_uri(), tmp_path / "profile2", f"--screenshot={shot}",
           "--window-size=1400,1000")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 200  # rendered text and pictures, not blank
    if os.environ.get("PRCO_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "inspect_page.png")


def test_the_filters_keep_the_tasks_they_name(chromium, page, run_dir, tmp_path):
    saved = read_step(run_dir / "rollouts" / "step_00000010")["tasks"]
    leaking = [t["index"] for t in saved if any(c["leak"] for c in t["captions"])]
    assert 0 < len(leaking) < len(saved)
    dom = browse(chromium, page.as_uri() + "#leak", tmp_path / "profile", "--dump-dom")
    cards = re.findall(r'<section class="task( hidden)?" data-wrong="\d" data-leak="(\d)"', dom)
    assert [leak for _, leak in cards] == ["1" if t["index"] in leaking else "0" for t in saved]
    assert all((hidden == "") == (leak == "1") for hidden, leak in cards)
    assert re.search(rf'<span id="shown">{len(leaking)}</span>', dom)


def test_compare_puts_the_warm_start_beside_the_trained_captions(tmp_path):
    from prco_mega.eval.synthetic import EvalRecord

    cfg = RunConfig()
    cfg.run.eval_tasks, cfg.data.families = 3, {"polygons": 1.0}
    cfg.warm_start.misreads = {"polygons": {3: 4}}  # int keys, which JSON turns into strings
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))

    def records(caption: str, correct: float):
        return [EvalRecord(uid=t.uid, family=t.family, answer=t.answer, caption=caption,
                           caption_tokens=3, perception=correct, leak=0, caption_format_ok=True,
                           response=f"\\boxed{{{t.answer if correct else 0}}}",
                           response_tokens=4, correct=correct, format=1.0, truncated=False)
                for t in held_out(cfg)]

    write_eval_records(tmp_path / "eval_start.json", records("- a square <before>", 0.0))
    write_eval_records(tmp_path / "eval_end.json", records("- a triangle", 1.0))
    assert cli(["inspect", str(tmp_path), "--compare"]) == 0
    compare = (tmp_path / "inspect" / "compare.html").read_text()
    assert compare.count("<section class='task' data-changed=\"1\"") == 3
    assert "- a square &lt;before&gt;" in compare and "- a triangle" in compare
    assert compare.count("data:image/png;base64,") == 3
    assert all(html.escape(t.question) in compare for t in held_out(cfg))


def test_a_run_without_saved_rollouts_is_named(tmp_path, capsys):
    assert cli(["inspect", str(tmp_path)]) == 2
    assert "has no saved rollouts" in capsys.readouterr().err
