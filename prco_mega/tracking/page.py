"""`prco-mega inspect`: a self-contained HTML page (images embedded as base64, no network) of a
run's saved rollouts or of its held-out captions before and after RL.

- Step page (`inspect RUN_DIR [--step N]`): each saved task's image beside its question, gold
  answer and Observer captions; per caption its perception, leak flag, utility reward and
  advantage, and its Solver answers with correctness, reward and advantage; the caption whose
  Solver group was trained is marked. Rewards and advantages are coloured (red low or negative,
  green high or positive). Filters keep the tasks with a wrong answer, a leaking caption, or a
  group whose rewards are all equal (zero variance: no advantage signal).
- Compare page (`--compare`): every held-out task's greedy caption and answer at the warm start
  beside the trained policy's (`eval_start_records.jsonl`, `eval_end_records.jsonl`), with
  filters for changed answers, answers wrong after RL and leaks.

When the page has loaded, `<body>` carries `data-images-loaded` (images decoded) and
`data-images-total`, which a headless browser can read; `page.html#leak,wrong` opens it with
those filters on.
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prco_mega.config import RunConfig, from_dict
from prco_mega.data import synthetic
from prco_mega.tracking.rollouts import eval_records_path, png_bytes, read_step, saved_steps

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #d8dce3;padding:10px 18px;
z-index:1}
header h1{font-size:18px;margin:0 0 6px}
header label{margin-right:16px;cursor:pointer}
.legend span{display:inline-block;padding:1px 6px;border-radius:4px;margin-right:4px}
main{padding:12px 18px}
.task{display:flex;gap:16px;background:#fff;border:1px solid #d8dce3;border-radius:8px;
padding:12px;margin-bottom:14px}
.task.hidden{display:none}
.side{flex:0 0 260px}
.side img{width:256px;height:auto;border:1px solid #ccd;border-radius:4px;image-rendering:pixelated}
.side .q{margin-top:6px}.side .meta{color:#667;font-size:12px;margin-top:4px}
.body{flex:1;min-width:0}
table{border-collapse:collapse;width:100%}
th{font-size:12px;text-align:left;color:#556;border-bottom:1px solid #d8dce3;padding:3px 6px}
td{vertical-align:top;padding:4px 6px;border-bottom:1px solid #eef0f3}
tr.trained>td:first-child{border-left:4px solid #2f6fed}
pre{white-space:pre-wrap;margin:0;font:12px/1.35 ui-monospace,monospace}
.num{display:inline-block;min-width:44px;text-align:right;padding:0 5px;border-radius:4px;
font:12px ui-monospace,monospace}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:11px;font-weight:600}
.leak{background:#cf222e;color:#fff}.zero{background:#8c959f;color:#fff}
.train{background:#2f6fed;color:#fff}
.answers{margin:0;padding:0;list-style:none}
.answers li{display:flex;gap:6px;align-items:baseline;margin:1px 0}
.answers li pre{flex:1}
.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.col h3{font-size:13px;margin:0 0 4px;color:#445}
"""

_JS = """
function applyFilters(){
  const on = [...document.querySelectorAll('header input[data-filter]')]
    .filter(b => b.checked).map(b => b.dataset.filter);
  let shown = 0;
  document.querySelectorAll('.task').forEach(t => {
    const keep = on.every(f => t.dataset[f] === '1');
    t.classList.toggle('hidden', !keep); if (keep) shown++;
  });
  document.getElementById('shown').textContent = shown;
}
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const preset = location.hash.slice(1).split(',');  // page.html#leak,wrong opens filtered
  document.querySelectorAll('header input[data-filter]').forEach(b => {
    b.checked = preset.includes(b.dataset.filter);
    b.addEventListener('change', applyFilters);
  });
  applyFilters();
});
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def reward_color(value: float) -> str:
    """Red (0) through yellow to green (1), clamped."""
    x = min(max(value, 0.0), 1.0)
    return f"hsl({120 * x:.0f},70%,82%)"


def advantage_color(value: float, scale: float = 1.0) -> str:
    """Green for positive, red for negative, stronger with |value| / scale; grey at 0."""
    if value == 0:
        return "#eef0f3"
    alpha = 0.15 + 0.75 * min(abs(value) / scale, 1.0)
    return f"rgba(46,160,67,{alpha:.2f})" if value > 0 else f"rgba(207,34,46,{alpha:.2f})"


def _num(value: float | None, color: str | None, signed: bool = False) -> str:
    if value is None:
        return '<span class="num">n/a</span>'
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f'<span class="num" style="background:{color}">{text}</span>'


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _mark(ok: float) -> str:
    return '<span class="ok">&#10003;</span>' if ok else '<span class="bad">&#10007;</span>'


def _page(title: str, filters: Sequence[tuple[str, str]], legend: str, count: int,
          cards: Sequence[str]) -> str:
    boxes = "".join(f'<label><input type="checkbox" data-filter="{key}"> {_esc(label)}</label>'
                    for key, label in filters)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style><script>{_JS}</script></head><body><header>"
            f"<h1>{_esc(title)}</h1><div>{boxes} <span id='shown'>{count}</span> of {count} "
            f"tasks shown</div><div class='legend'>{legend}</div></header><main>"
            + "".join(cards) + "</main></body></html>")


# ---------------------------------------------------------------- a saved step


def _answers_list(answers: list[dict[str, Any]]) -> str:
    items = [f"<li>{_mark(a['correct'])}<pre>{_esc(a['text'])}</pre>"
             f"{_num(a['reward'], reward_color(a['reward']))}"
             f"{_num(a['advantage'], advantage_color(a['advantage']), signed=True)}</li>"
             for a in answers]
    return f"<ul class='answers'>{''.join(items)}</ul>"


def _caption_row(k: int, c: dict[str, Any]) -> str:
    badges = ('<span class="badge leak">leak</span> ' if c["leak"] else "") + (
        '<span class="badge train">Solver group trained</span> '
        if c["solver_group_trained"] else "") + (
        '<span class="badge zero">answers: zero variance</span>'
        if c["solver_zero_variance"] else "")
    perception = c["perception"]
    return (f"<tr class='caption{' trained' if c['solver_group_trained'] else ''}'><td>{k}</td>"
            f"<td><pre>{_esc(c['text'])}</pre>{badges}</td>"
            f"<td>{_num(perception, reward_color(perception) if perception is not None else None)}"
            f"</td><td>{_num(c['reward'], reward_color(c['reward']))}</td>"
            f"<td>{_num(c['advantage'], advantage_color(c['advantage']), signed=True)}</td>"
            f"<td>{_answers_list(c['answers'])}</td></tr>")


def _flags(task: dict[str, Any]) -> dict[str, bool]:
    answers = [a for c in task["captions"] for a in c["answers"]] + task["answers"]
    return {"wrong": any(not a["correct"] for a in answers),
            "leak": any(c["leak"] for c in task["captions"]),
            "zerovar": task["zero_variance"] or any(c["solver_zero_variance"]
                                                   for c in task["captions"])}


def _task_card(task: dict[str, Any], step_dir: Path) -> str:
    flags = _flags(task)
    data = " ".join(f'data-{k}="{int(v)}"' for k, v in flags.items())
    images = "".join(_img((step_dir / name).read_bytes(), f"task {task['index']} image")
                     for name in task["images"])
    group = "caption rewards all equal (no Observer signal)" if task["zero_variance"] else ""
    side = (f"<div class='side'>{images}<div class='q'><b>Q</b> {_esc(task['question'])}</div>"
            f"<div>gold answer: <b>{_esc(task['answer'])}</b></div><div class='meta'>task "
            f"{task['index']} &middot; {_esc(task['family'])} &middot; {_esc(task['uid'])} "
            f"&middot; Solver {'saw' if task['solver_saw_image'] else 'did not see'} the image"
            f"{' &middot; ' + group if group else ''}</div></div>")
    if task["captions"]:
        rows = "".join(_caption_row(k, c) for k, c in enumerate(task["captions"]))
        body = ("<table><tr><th>#</th><th>Observer caption</th><th>perception</th>"
                "<th>reward</th><th>advantage</th><th>Solver answers: correct, reward, "
                f"advantage</th></tr>{rows}</table>")
    else:  # single-role baselines
        body = f"<h3>look-and-answer responses</h3>{_answers_list(task['answers'])}"
    return f"<section class='task' {data}>{side}<div class='body'>{body}</div></section>"


_LEGEND = ("reward <span style='background:" + reward_color(0) + "'>0</span><span style='"
           "background:" + reward_color(0.5) + "'>0.5</span><span style='background:"
           + reward_color(1) + "'>1</span> advantage <span style='background:"
           + advantage_color(-1) + "'>-</span><span style='background:" + advantage_color(1)
           + "'>+</span> <span class='badge train'>Solver group trained</span> (blue bar): the "
           "caption whose answers entered the loss")


def step_page(run_dir: Path, step: int | None = None) -> tuple[str, int]:
    """(HTML, step) of a saved step of `run_dir` (the newest when `step` is None)."""
    steps = saved_steps(Path(run_dir) / "rollouts")
    if not steps:
        raise ValueError(f"{str(run_dir)!r} has no saved rollouts (rollouts/step_*): set "
                         "saved_rollouts.every > 0 in the run's config")
    by_step = {int(p.name.removeprefix("step_")): p for p in steps}
    step = max(by_step) if step is None else step
    if step not in by_step:
        raise ValueError(f"step {step} of {str(run_dir)!r} was not saved (saved: "
                         f"{sorted(by_step)})")
    saved = read_step(by_step[step])
    cards = [_task_card(t, by_step[step]) for t in saved["tasks"]]
    title = f"{Path(run_dir).name}: rollouts of step {step}"
    filters = [("wrong", "a wrong answer"), ("leak", "a leaking caption"),
               ("zerovar", "a zero-variance group")]
    return _page(title, filters, _LEGEND, len(cards), cards), step


# ---------------------------------------------------------------- warm start vs trained


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ValueError(f"{str(path)!r} not found: --compare needs the held-out records a run "
                         "writes at its start and end evaluations")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held_out_tasks(run_dir: Path) -> dict[str, tuple[str, list[bytes]]]:
    """(question, PNG bytes of its images) of the run's held-out tasks by uid, redrawn from its
    `config.json` (held-out tasks are synthetic, drawn from the run's seed)."""
    data = json.loads((Path(run_dir) / "config.json").read_text())
    # the sections the held-out draw reads (JSON turned some int keys elsewhere into strings)
    cfg = from_dict(RunConfig, {"run": data["run"], "data": data["data"]})
    return {t.uid: (t.question, [png_bytes(im) for im in t.images])
            for t in synthetic.held_out_tasks(cfg.data, cfg.run.seed, cfg.run.eval_tasks)}


def _eval_cell(r: dict[str, Any]) -> str:
    perception = r.get("perception")
    leak = '<span class="badge leak">leak</span>' if r.get("leak") else ""
    return (f"<pre>{_esc(r['caption'])}</pre>{leak}<div>perception "
            f"{_num(perception, reward_color(perception) if perception is not None else None)}"
            f"</div><ul class='answers'><li>{_mark(r['correct'])}<pre>{_esc(r['response'])}</pre>"
            "</li></ul>")


def compare_page(run_dir: Path, limit: int | None = None) -> str:
    """HTML of the held-out tasks: warm start's greedy caption and answer beside the trained
    policy's, first `limit` tasks (all when None)."""
    run_dir = Path(run_dir)
    before = _read_jsonl(eval_records_path(run_dir / "eval_start.json"))[:limit]
    after = {r["uid"]: r for r in _read_jsonl(eval_records_path(run_dir / "eval_end.json"))}
    tasks = held_out_tasks(run_dir)
    cards = []
    for b in before:
        a = after.get(b["uid"])
        if a is None:
            continue
        flags = {"changed": b["response"] != a["response"], "wrongafter": not a["correct"],
                 "leak": bool(b.get("leak") or a.get("leak"))}
        data = " ".join(f'data-{k}="{int(v)}"' for k, v in flags.items())
        question, pngs = tasks.get(b["uid"], ("", []))
        pics = "".join(_img(png, b["uid"]) for png in pngs)
        cards.append(f"<section class='task' {data}><div class='side'>{pics}<div class='q'><b>Q"
                     f"</b> {_esc(question)}</div><div>gold answer: "
                     f"<b>{_esc(b['answer'])}</b></div><div class='meta'>{_esc(b['uid'])} "
                     f"&middot; {_esc(b['family'])}</div></div><div class='body cols'>"
                     f"<div class='col'><h3>warm start</h3>{_eval_cell(b)}</div>"
                     f"<div class='col'><h3>trained</h3>{_eval_cell(a)}</div></div></section>")
    title = f"{run_dir.name}: held-out captions, warm start vs trained (greedy)"
    filters = [("changed", "answer changed"), ("wrongafter", "wrong after RL"),
               ("leak", "a leaking caption")]
    legend = "perception " + "".join(f"<span style='background:{reward_color(x)}'>{x:g}</span>"
                                     for x in (0, 0.5, 1))
    return _page(title, filters, legend, len(cards), cards)


def write_page(run_dir: Path, *, step: int | None = None, compare: bool = False,
               limit: int | None = None, out: Path | None = None) -> Path:
    """Write the step page (or with `compare` the compare page) of `run_dir`; returns its path
    (default `run_dir/inspect/step_<N>.html` or `run_dir/inspect/compare.html`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    if compare:
        text, name = compare_page(run_dir, limit), "compare.html"
    else:
        text, step = step_page(run_dir, step)
        name = f"step_{step:08d}.html"
    out = Path(out) if out else run_dir / "inspect" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
