"""How much of the Observer's reward does its perception earn? A diagnostic of the PRCO signal.

    .venv/bin/python tools/observer_signal.py [configs/tiny_cpu.yaml] [--tasks 64] [key=value ...]

Loads the policy RL starts from (the cached warm start of the config, or `model.hf_path`), samples
`observer.n` captions per held-out task at the rollout temperature and `solver.n` Solver answers
per caption, without the image (the caption-first warm-up) and with it, and prints the Observer
reward (the Solver's success rate given the caption) for each caption-perception level. A reward
that rises with perception is a perception signal; reward on captions with no fact right is the
Solver's luck (or its own look at the image), which the group advantage sees as noise.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from statistics import fmean

from prco_mega.config import load_config
from prco_mega.data.captions import perception_accuracy
from prco_mega.data.synthetic import held_out_tasks
from prco_mega.dist import world
from prco_mega.eval.report import format_table
from prco_mega.eval.synthetic import reward_by_perception
from prco_mega.rewards.verifier import verify
from prco_mega.roles.prompts import PromptSet
from prco_mega.rollout.engine import RolloutEngine, SamplingSettings
from prco_mega.rollout.two_stage import (engine_eos, request_of, settings_from_section,
                                         solver_caption)
from prco_mega.runtime import build
from prco_mega.runtime.warm_start import prepare_model
from prco_mega.types import Task


def observer_signal(engine: RolloutEngine, prompts: PromptSet, tasks: list[Task], *,
                    captions: SamplingSettings, answers: SamplingSettings,
                    with_image: bool) -> list[tuple[float, float]]:
    """(perception, r_O without the leak factor) of `captions.n` sampled captions per task, r_O
    being the mean correctness of `answers.n` Solver answers given the caption (two engine
    calls). `with_image`: the Solver sees the image (after the caption-first warm-up) or not."""
    eos = engine_eos(engine)
    caption_sets = engine.generate([request_of(prompts.observer(t)) for t in tasks], captions)
    scored = [(t, solver_caption(g.text, eos)) for t, gens in zip(tasks, caption_sets, strict=True)
              for g in gens]
    answer_sets = engine.generate(
        [request_of(prompts.solver(t, c, with_image=with_image)) for t, c in scored], answers)
    return [(perception_accuracy(c, t.facts),
             fmean(verify(g.text, t.answer, t.choices) for g in gens))
            for (t, c), gens in zip(scored, answer_sets, strict=True)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="held-out tasks (default 64)")
    args, rest = parser.parse_known_args(argv)
    # [config] then key=value overrides, as `prco-mega train` takes them
    config = rest[0] if rest and "=" not in rest[0] else "configs/tiny_cpu.yaml"
    overrides = rest[1:] if config in rest[:1] else rest
    bad = [a for a in overrides if "=" not in a]
    if bad:
        parser.error(f"expected key=value overrides after the config, got {bad}")

    cfg = load_config(config, overrides)
    world.init_world()
    engine = build.start_engine(cfg, prepare_model(cfg))
    tasks = held_out_tasks(cfg.data, cfg.run.seed, args.tasks)

    def sample(section):  # the rollout's settings, without log-probs (nothing trains)
        return dataclasses.replace(settings_from_section(section, seed=cfg.run.seed),
                                   logprobs=False)

    for with_image in (False, True):
        pairs = observer_signal(engine, build.prompt_set(cfg), tasks, captions=sample(cfg.observer),
                                answers=sample(cfg.solver), with_image=with_image)
        rows = [{**r, "share": f"{100 * r['share']:.1f}%"} for r in reward_by_perception(pairs)]
        print(f"\nSolver {'with' if with_image else 'without'} the image: {len(tasks)} tasks, "
              f"{cfg.observer.n} captions each, {cfg.solver.n} answers per caption")
        print(format_table(rows, {"perception": "caption perception", "captions": "captions",
                                  "share": "share", "reward": "mean Observer reward"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
