"""Typed configs: YAML file + `key.path=value` overrides -> nested dataclasses, validated.

Every section is a dataclass with a doc line per field; unknown keys and wrong types are errors
that name the key path. Only the build layer (`build.py`) sees the whole `RunConfig`; each
component receives its own section. Sections owned by a component live beside it (learner,
rollout, cluster) and are assembled here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prco_mega.cluster.config import ClusterSection
from prco_mega.data.images import PIL_MAX_IMAGE_PIXELS
from prco_mega.data.synthetic_families import FAMILIES, POLYGONS
from prco_mega.families import FAMILIES as MODEL_FAMILIES
from prco_mega.learner.config import LearnerConfig
from prco_mega.rollout.config import EngineConfig, RolloutSection
from prco_mega.tracking.config import SavedRolloutsSection, check_loggers


# ----------------------------------------------------------------------------- generic machinery
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML scalars where lossless."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, path)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == 1:  # `X | None`: the one real type's own message names it best
            raise ValueError(errors[0])
        raise ValueError(f"{path}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{path}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `2e-4` (no dot) as a string; the user clearly meant the number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"{path}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and type errors name the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or "top level"
        raise ValueError(f"unknown config key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def apply_override(data: dict, dotted: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict in place."""
    if "=" not in dotted:
        raise ValueError(f"override {dotted!r} must look like key.path=value")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"override {dotted!r}: the value is not valid YAML "
                         f"({_yaml_problem(err, column_offset=len(key) + 1)})") from err


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (for saving beside checkpoints and in metrics)."""
    return dataclasses.asdict(cfg)


def _yaml_problem(err: yaml.YAMLError, column_offset: int = 0) -> str:
    """PyYAML's error in one line: what, then 1-based line and column where it noticed."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1 + column_offset}"


def _config_text(p: Path) -> str:
    """The file's text; a binary or non-UTF-8 file is refused by name."""
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ValueError(f"config file {str(p)!r} cannot be read: {err.strerror}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {str(p)!r} is not a YAML text file (byte "
                         f"0x{raw[err.start]:02x} at position {err.start} is not UTF-8)") from err
    if "\x00" in text:
        raise ValueError(f"config file {str(p)!r} is not a YAML text file (NUL byte at position "
                         f"{text.index(chr(0))})")
    return text


def load_yaml(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML config and apply overrides; the result is validated by `from_dict`."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(_config_text(p)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(err)}") \
            from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping at the top level")
    for ov in overrides:
        apply_override(data, ov)
    return data


# ----------------------------------------------------------------------------- sections
@dataclass
class RunSection:
    name: str = "tiny"
    """Run name; outputs go to `output_dir/name`."""
    output_dir: str = "runs"
    """Where metrics, plots and checkpoints are written (relative to the working directory)."""
    seed: int = 1234
    """Seed of everything: data order, sampling, Solver-group selection, init."""
    steps: int = 20
    """RL steps (one step = rollout of `data.prompts_per_step` tasks + one optimizer step)."""
    eval_tasks: int = 64
    """Held-out synthetic tasks for the final warm-start-vs-trained table."""
    loggers: list[Literal["console", "jsonl", "tensorboard", "wandb"]] = field(
        default_factory=lambda: ["console", "jsonl"])
    """Where each step's metrics go (rank 0, once per step): the step line and progress bar,
    metrics.jsonl (required), TensorBoard event files in `tensorboard/`, a W&B run in `wandb/`."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """W&B offline (files only, `wandb sync` uploads them later) unless asked for online."""
    wandb_project: str = "prco-mega"
    """W&B project of the run (the run is named `run.name`)."""

    def validate(self) -> None:
        if self.steps < 0 or self.eval_tasks < 0:
            raise ValueError(f"run.steps ({self.steps}) and run.eval_tasks ({self.eval_tasks}) "
                             "must be >= 0")

        check_loggers(self.loggers)


@dataclass
class DataSection:
    source: Literal["synthetic", "jsonl", "parquet"] = "synthetic"
    """Where tasks come from: the embedded synthetic generator or local files."""
    path: str | None = None
    """Data file for jsonl/parquet sources."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad rows/images: stop with an error naming the row, or skip and count them."""
    image_backend: Literal["pil", "dali"] = "pil"
    """Image decoder for file sources."""
    image_size: int = 224
    """Synthetic image side in pixels; a multiple of 28 (Qwen2.5-VL's merged patch)."""
    difficulty: int = 1
    """Synthetic difficulty level (object counts, value ranges)."""
    families: dict[str, float] = field(default_factory=dict)
    """Synthetic family mix weights, e.g. {shapes: 1, bars: 1}; empty = all families equally."""
    prompts_per_step: int = 8
    """Tasks per RL step."""
    max_image_pixels: int = PIL_MAX_IMAGE_PIXELS
    """Largest image (width x height) a file source may hold; a larger one is a bad row
    (`image_too_large`), refused before decoding. Default: PIL's decompression-bomb threshold;
    PIL itself refuses images over twice its threshold whatever this says."""

    def validate(self) -> None:
        if not 1 <= self.max_image_pixels <= 2 * PIL_MAX_IMAGE_PIXELS:
            raise ValueError(f"data.max_image_pixels ({self.max_image_pixels}) must be in "
                             f"[1, {2 * PIL_MAX_IMAGE_PIXELS}] (PIL refuses larger images)")
        if self.image_size % 28:
            raise ValueError(f"data.image_size ({self.image_size}) must be a multiple of 28")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step ({self.prompts_per_step}) must be >= 1")


@dataclass
class RolesSection:
    observer_template: str | None = None
    """Observer prompt template file; None = the shipped one (prco_mega/roles/templates)."""
    solver_template: str | None = None
    """Solver prompt template file; None = the shipped one."""
    single_template: str | None = None
    """Single-role (baseline) template file; None = the shipped one."""
    system_prompt: str = "You are a helpful assistant."
    """System message of every chat."""


@dataclass
class SamplingSection:
    n: int = 4
    """Samples per prompt (G_O for the Observer, G_S per caption for the Solver)."""
    temperature: float = 1.0
    """Sampling temperature; must equal `learner.logprob_temperature` (the PPO ratio's)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    max_new_tokens: int = 64
    """Longest response in tokens (a longer one is cut, finish reason "length")."""

    def validate(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"sampling n ({self.n}) and max_new_tokens "
                             f"({self.max_new_tokens}) must be >= 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"temperature ({self.temperature}) must be > 0 and top_p "
                             f"({self.top_p}) in (0, 1]")


@dataclass
class RewardSection:
    lam: float = 0.9
    """Solver reward = lam * correctness + (1 - lam) * format."""
    leakage: Literal["rule", "llm_judge", "none"] = "rule"
    """Leakage checker for Observer captions."""

    def validate(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"reward.lam ({self.lam}) must be in [0, 1]")


CORRECTION_CAPS = {"token_tis": 2.0, "decoupled": None}
"""Presets taking `algo.tis_cap`, with the cap they use when it is unset."""
CORRECTION_BANDS = {"seq_mask": (0.999, 1.001), "icepop": (0.5, 5.0)}
"""Presets taking `algo.correction_low/high`, with their default band: IcePop's paper uses
[0.5, 5]; verl's guidance for a geometric-mean band puts its upper end at 1.0002-1.001."""


@dataclass
class AlgoSection:
    """The algorithm and its loss. Fields left at None take the algorithm's preset
    (`prco_mega.algo.registry.REGISTRY`); a value given here overrides the preset. The resolved values
    are printed when a run starts and written to its `config.json`."""

    name: Literal["prco", "prco_shared", "grpo", "dapo"] = "prco"
    """prco; prco_shared (Observer gets the outcome reward); grpo/dapo single-role baselines."""
    warmup_steps: int = 5
    """Caption-first warm-up: the Solver sees no image for the first N RL steps."""
    clip_low: float | None = None
    """PPO ratio lower clip, rho >= 1 - clip_low (preset: 0.2)."""
    clip_high: float | None = None
    """PPO ratio upper clip, rho <= 1 + clip_high (preset: 0.2; DAPO's clip-higher 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens; None = off."""
    kl_coef: float = 0.0
    """beta: KL to the reference policy, the checkpoint RL starts from (PRCO itself uses none).
    > 0 builds a frozen copy of that checkpoint in the learner's layout (one more forward pass
    per step, and one more copy of the weights per rank)."""
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator of the reference term (k1 = d, k2 = d^2/2, k3 = exp(-d) - 1 + d)."""
    level: Literal["token", "sequence"] | None = None
    """Loss aggregation, with global per-role denominators (preset: token; GRPO: sequence)."""
    scale_by_std: bool | None = None
    """Divide group advantages by their std (preset: PRCO no, GRPO and DAPO yes)."""
    off_policy_correction: (Literal["none", "token_tis", "seq_mask", "icepop", "decoupled"]
                            | None) = None
    """Off-policy correction of the PPO loss (`algo/corrections.py`, docs/algorithm.md), k =
    learner's pre-update prob / rollout prob per token: none (ratio against the rollout's
    log-probs); token_tis (weight min(k, tis_cap)); seq_mask (drop sequences whose geometric-mean
    k leaves the band); icepop (drop tokens whose k leaves the band, weight the rest by k);
    decoupled (decoupled PPO: weight k, truncated at tis_cap if set). None: token_tis when
    tis_cap is set, else none."""
    tis_cap: float | None = None
    """Truncation cap of the importance weight k: token_tis's (default 2.0) and decoupled's
    (>= 1; unset = untruncated). Set without off_policy_correction it selects token_tis."""
    correction_low: float | None = None
    """Lower end of the ratio band of seq_mask (default 0.999) and icepop (default 0.5)."""
    correction_high: float | None = None
    """Upper end of the ratio band of seq_mask (default 1.001) and icepop (default 5.0)."""
    dynamic_sampling: bool | None = None
    """Drop groups whose rewards are all equal and draw more prompts until `data.prompts_per_step`
    informative groups are found (preset: DAPO yes, single-role only)."""
    max_extra_draws: int | None = None
    """Dynamic sampling: at most this many extra batches of prompts per step (preset: 4)."""
    routing_replay: Literal["none", "learner", "rollout"] = "none"
    """Mixture-of-experts policies: which routing the learner's forwards use
    (`learner/routing_replay.py`, docs/algorithm.md). none: its routers' own top-k; learner (R2):
    the first pass of the step records its routing and the later passes (mini-batches after the
    first update) replay it; rollout (R3): the engine's routing of each sample (captured by the
    engine, one extra prefill per sample on CPU) is replayed in every forward, and the step logs
    per layer, role and token kind how often the learner's own routing agrees with it."""
    overlong_buffer: int | None = None
    """DAPO's soft overlong penalty: the last N tokens before `solver.max_new_tokens` where the
    penalty ramps from 0 to -1; 0 = off (preset: DAPO a fifth of max_new_tokens, else 0)."""

    def validate(self) -> None:
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"algo.dual_clip ({self.dual_clip}) must be > 1")
        for key in ("clip_low", "clip_high", "kl_coef", "max_extra_draws", "overlong_buffer"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"algo.{key} ({value}) must be >= 0")
        self.correction()

    def correction(self) -> tuple[str, float | None, tuple[float, float] | None]:
        """(preset, tis_cap, (low, high) band) of the off-policy correction in force, preset
        defaults filled in; ValueError naming the keys where they do not fit the preset."""
        name = self.off_policy_correction or ("token_tis" if self.tis_cap is not None else "none")
        cap, band = self.tis_cap, (self.correction_low, self.correction_high)
        if cap is not None and cap <= 0:
            raise ValueError(f"algo.tis_cap ({cap}) must be > 0")
        if cap is not None and name not in CORRECTION_CAPS:
            raise ValueError(f"algo.tis_cap ({cap}) is a parameter of {sorted(CORRECTION_CAPS)}, "
                             f"not of off_policy_correction {name!r}")
        if name == "decoupled" and cap is not None and cap < 1:
            raise ValueError(f"algo.tis_cap ({cap}) must be >= 1 for decoupled PPO (its weights "
                             "are 1 where the proximal and behaviour policies agree)")
        if name not in CORRECTION_BANDS:
            if band != (None, None):
                raise ValueError(f"algo.correction_low/high {band} are parameters of "
                                 f"{sorted(CORRECTION_BANDS)}, not of off_policy_correction "
                                 f"{name!r}")
            return name, CORRECTION_CAPS.get(name) if cap is None else cap, None
        low, high = (given if given is not None else default
                     for given, default in zip(band, CORRECTION_BANDS[name]))
        if not 0.0 < low < 1.0 < high:
            raise ValueError(f"algo.correction_low ({low}) and correction_high ({high}) of "
                             f"{name} must satisfy 0 < low < 1 < high")
        return name, None, (low, high)


@dataclass
class KernelsSection:
    """Which loss-head implementation the learner runs."""

    impl: Literal["torch", "triton"] = "torch"
    """Loss-head implementation; "triton" raises where Triton cannot run (never a silent fallback)."""


@dataclass
class ModelSection:
    hf_path: str | None = None
    """Hugging Face checkpoint directory (safetensors + config + tokenizer + processor).
    None = the tiny Qwen2.5-VL-architecture model, built locally with a tokenizer trained on the
    synthetic corpus (no hub on CPU machines), cached under `cache_dir`."""
    cache_dir: str = "runs/cache"
    """Where the built tiny model and the warm-start result are cached between runs."""
    tiny_seed: int = 0
    """Init seed of the tiny model."""
    tiny_sizes: dict[str, Any] = field(default_factory=dict)
    """Overrides of the tiny model's size fields (the family's `TinyBuilder.sizes`, e.g.
    `families/qwen2_5_vl/tiny.py`'s `TinySizes`), e.g. {vision_hidden: 64, vision_depth: 4}."""
    family: str | None = None
    """Model family: a Hugging Face model_type of the family registry (`prco_mega.families`).
    None: the checkpoint's config.json decides (the tiny model: qwen2_5_vl); set, it builds the
    tiny model of that family, or must match the checkpoint at hf_path."""
    freeze_vision: bool = False
    """Train only the language model (the vision tower stays as loaded)."""

    def validate(self) -> None:
        if self.family is not None and self.family not in MODEL_FAMILIES:
            raise ValueError(f"model.family {self.family!r} is not a known model family; known: "
                             f"{sorted(MODEL_FAMILIES)}")


@dataclass
class WarmStartSection:
    steps: int = 0
    """Supervised steps on synthetic demonstrations before RL (0 = none; the tiny model needs it:
    PRCO starts from an instruct model, which the tiny one is not)."""
    tasks_per_step: int = 16
    """Synthetic tasks per supervised step (each gives an Observer and a Solver demonstration)."""
    lr: float = 1e-3
    """Peak learning rate of the warm start (linear warm-up, then cosine decay to a tenth)."""
    drop: float = 0.15
    """Probability that a demonstrated caption leaves out a needed fact."""
    corrupt: float = 0.15
    """Probability that a demonstrated caption misstates a needed fact."""
    bias: float = 0.0
    """Probability that the demonstrator states a fact through its systematic confusion
    (`misreads`); see `prco_mega.tiny.demos.DemoNoise.bias`."""
    misreads: dict[str, dict[int, int]] = field(default_factory=dict)
    """The demonstrator's systematic confusions, family -> {true value: value it states}, applied
    with probability `bias`: {polygons: {3: 4}} reads triangles as squares."""

    def validate(self) -> None:
        if self.steps < 0 or self.tasks_per_step < 1 or self.lr <= 0:
            raise ValueError(f"warm_start: steps ({self.steps}) >= 0, tasks_per_step "
                             f"({self.tasks_per_step}) >= 1 and lr ({self.lr}) > 0 required")
        for name in ("drop", "corrupt", "bias"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"warm_start.{name} ({getattr(self, name)}) must be in [0, 1]")
        if self.bias > 0 and not any(self.misreads.values()):
            raise ValueError(f"warm_start.bias ({self.bias}) needs warm_start.misreads, the values "
                             "the demonstrator confuses (e.g. {polygons: {3: 4}})")

        for family, pairs in self.misreads.items():
            if family not in FAMILIES:
                raise ValueError(f"warm_start.misreads: unknown family {family!r} "
                                 f"(one of {sorted(FAMILIES)})")
            # A polygon is stated by its corner count, so only the drawn shapes' counts exist.
            corners = sorted(POLYGONS.values())
            for true, stated in pairs.items():
                bad_polygon = family == "polygons" and not {true, stated} <= set(corners)
                if true == stated or min(true, stated) < 0 or bad_polygon:
                    where = f" and in {corners} (corners)" if family == "polygons" else ""
                    raise ValueError(f"warm_start.misreads.{family}.{true} ({stated}): a confusion "
                                     f"maps a value to a different one, both >= 0{where}")


@dataclass
class RunConfig:
    """A whole run. Only the build layer sees all of it; each component gets its section."""

    run: RunSection = field(default_factory=RunSection)
    """Name, output directory, seed, RL steps, held-out evaluation size."""
    model: ModelSection = field(default_factory=ModelSection)
    """The checkpoint RL starts from (or the tiny model built locally)."""
    data: DataSection = field(default_factory=DataSection)
    """Where tasks come from and how many each step trains on."""
    roles: RolesSection = field(default_factory=RolesSection)
    """Role prompt templates and the system prompt."""
    observer: SamplingSection = field(default_factory=SamplingSection)
    """Observer sampling: n = G_O captions per task."""
    solver: SamplingSection = field(default_factory=SamplingSection)
    """Solver sampling: n = G_S answers per caption (baselines: answers per task)."""
    reward: RewardSection = field(default_factory=RewardSection)
    """Solver reward weighting and the leakage checker."""
    algo: AlgoSection = field(default_factory=AlgoSection)
    """The algorithm (registry entry) and its loss; unset fields take the entry's preset."""
    kernels: KernelsSection = field(default_factory=KernelsSection)
    """The learner's loss-head implementation."""
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    """Supervised steps on demonstrations before RL (the tiny model's stand-in for an instruct
    model)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Megatron learner: parallel layout, batching, optimizer, schedule, checkpoints
    (`learner/config.py`)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Rollout engine (vLLM) settings (`rollout/config.py`)."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """How sampling is scheduled against the learner (bounded staleness)."""
    cluster: ClusterSection | None = None
    """Cluster layout for `prco-mega launch` / `plan`; None for a single-machine run."""
    saved_rollouts: SavedRolloutsSection = field(default_factory=SavedRolloutsSection)
    """A sample of every Nth step's rollouts kept for `prco-mega inspect` (`tracking/config.py`)."""

    def validate(self) -> None:
        placement = self.cluster.rollout_placement if self.cluster is not None else "colocated"
        if self.rollout.max_staleness and placement != "separate":
            raise ValueError(f"rollout.max_staleness: {self.rollout.max_staleness} needs "
                             "cluster.rollout_placement: separate (colocated placement is "
                             "synchronous: its engines share the learner's devices, so the "
                             "rollout cannot overlap the learner step)")
        if self.algo.routing_replay == "rollout" and self.rollout.partial_rollouts:
            raise ValueError("algo.routing_replay: rollout with rollout.partial_rollouts: a "
                             "sequence continued under new weights was routed by several policy "
                             "versions, and one routing cannot be replayed for all of them (use "
                             "routing_replay: learner, or turn partial rollouts off)")
        # The engine reports log_softmax(logits / T) of the sampled tokens; the learner's ratio is
        # only right if it divides by the same T.
        t = self.learner.logprob_temperature
        for role in ("observer", "solver"):
            if getattr(self, role).temperature != t:
                raise ValueError(f"{role}.temperature ({getattr(self, role).temperature}) must equal "
                                 f"learner.logprob_temperature ({t}): the learner's PPO ratio "
                                 "uses the rollout's log-probs at that temperature")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file + `key.path=value` overrides -> validated `RunConfig` (errors name the key)."""
    return from_dict(RunConfig, load_yaml(path, overrides))
