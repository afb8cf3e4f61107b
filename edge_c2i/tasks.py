"""Tasks: lists of (prompt, answer[, choices]) examples, their loaders and their splits.

Two sources:

- ``bigbench:NAME`` reads a task.json of the ``bigbench==1.0.0`` sdist from PyPI
  (fetched once with ``pip download --no-deps``; only the task files used are
  extracted).  Nested tasks are addressed by path: ``bigbench:fact_checker/fever``.
- ``jsonl:PATH``: one JSON object a line,
  ``{"prompt": str, "answer": str, "choices": [str, ...]}``; with ``choices`` it
  is a choice task whose gold is ``answer``, without it an open-answer task.

The prompt is built from the task's own prefixes as BIG-bench builds it:
``task_prefix + example_input_prefix + input + example_output_prefix`` (defaults
``"\\nQ: "`` and ``"\\nA: "``), and the answer follows it.  Unlike BIG-bench's
default (``append_choices_to_input``), the choices of a multiple-choice task are
not listed in the prompt: each is scored as a continuation of it, as LASER does.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .paths import home

BIGBENCH_SDIST = "bigbench==1.0.0"
TASKS_IN_ARCHIVE = "bigbench-1.0.0/bigbench/benchmark_tasks/"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None  # None: open answer
    aliases: tuple[str, ...] = ()  # other accepted answers of an open question


@dataclass
class Task:
    name: str
    examples: list[Example]

    @property
    def is_choice(self) -> bool:
        return self.examples[0].choices is not None


@dataclass
class Splits:
    calib: list[Example]
    eval: list[Example]
    test: list[Example]
    protocol: str = "c2i"
    sizes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- BIG-bench


def bigbench_archive() -> Path:
    """The bigbench sdist, downloaded once from PyPI into the cache dir."""
    folder = home() / "bigbench"
    found = sorted(folder.glob("bigbench-1.0.0*.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"edge-c2i: downloading {BIGBENCH_SDIST} (358 MB, once) into {folder}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--quiet", "-d", str(folder), BIGBENCH_SDIST]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise UserError(f"could not download {BIGBENCH_SDIST} with pip; check access to PyPI")
    found = sorted(folder.glob("bigbench-1.0.0*.tar.gz"))
    if not found:
        raise UserError(f"pip did not leave a bigbench sdist in {folder}")
    return found[0]


def bigbench_task_file(name: str) -> Path:
    """Extract (once) and return the JSON file of a BIG-bench task."""
    name = name.strip("/")
    out_dir = home() / "bigbench" / "tasks" / name
    for fname in ("task.json", "task_mc.json"):
        if (out_dir / fname).is_file():
            return out_dir / fname
    wanted = {f"{TASKS_IN_ARCHIVE}{name}/{f}": f for f in ("task.json", "task_mc.json")}
    seen = []  # every name in the archive, if the task is not found
    with tarfile.open(bigbench_archive()) as tar:  # one streaming pass, stop at the file
        for member in tar:
            seen.append(member.name)
            if member.name in wanted and member.isfile():
                out_dir.mkdir(parents=True, exist_ok=True)
                target = out_dir / wanted[member.name]  # truthful_qa ships task_mc.json
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(tar.extractfile(member).read())
                tmp.rename(target)
                return target
    _refuse_parent_task(name, seen)
    raise UserError(
        f"unknown BIG-bench task {name!r}: no task.json for it in {BIGBENCH_SDIST} "
        "(nested tasks are addressed by path, e.g. bigbench:fact_checker/fever)"
    )


def _refuse_parent_task(name: str, names: list[str] | None = None) -> None:
    """A task split in subtasks (its own task.json, if any, has no examples): name them.

    ``names``: the archive's member names, if a pass over it already read them.
    """
    below = f"{TASKS_IN_ARCHIVE}{name}/"
    if names is None:
        with tarfile.open(bigbench_archive()) as tar:
            names = tar.getnames()
    subtasks = sorted(f"bigbench:{name}/{n[len(below):-len('/task.json')]}" for n in names
                      if n.startswith(below) and n.endswith("/task.json")
                      and n != f"{below}task.json")
    if subtasks:
        raise UserError(f"BIG-bench task {name!r} is split in subtasks; pick one: "
                        + ", ".join(subtasks))


def parse_bigbench(data: dict, source: str) -> list[Example]:
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise UserError(f"{source}: not a BIG-bench task (no 'examples' list)")
    task_prefix = data.get("task_prefix", "")
    in_prefix = data.get("example_input_prefix", "\nQ: ")
    out_prefix = data.get("example_output_prefix", "\nA: ")
    examples = []
    for i, ex in enumerate(data["examples"]):
        where = f"{source}: example {i}"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise UserError(f"{where}: no 'input' string")
        prompt = task_prefix + in_prefix + ex["input"] + out_prefix
        if isinstance(ex.get("target_scores"), dict) and ex["target_scores"]:
            scores = ex["target_scores"]
            choices = tuple(scores)
            gold = max(choices, key=lambda c: scores[c])
            examples.append(Example(prompt, gold, choices))
        elif "target" in ex:
            targets = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
            targets = [t for t in targets if isinstance(t, str) and t.strip()]
            if not targets:
                raise UserError(f"{where}: empty 'target'")
            examples.append(Example(prompt, targets[0], None, tuple(targets[1:])))
        else:
            raise UserError(f"{where}: neither 'target_scores' nor 'target'")
    return examples


# --------------------------------------------------------------------------- JSONL


def parse_jsonl(path: Path) -> list[Example]:
    if not path.is_file():
        raise UserError(f"no such task file: {path}")
    examples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected an object with 'prompt' and 'answer'")
        prompt, answer, choices = obj.get("prompt"), obj.get("answer"), obj.get("choices")
        if not isinstance(prompt, str) or not isinstance(answer, str) or not answer.strip():
            raise UserError(f"{where}: 'prompt' and a non-empty 'answer' must be strings")
        if choices is not None:
            if (not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(c, str) and c.strip() for c in choices)):
                raise UserError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
            if answer not in choices:
                raise UserError(f"{where}: the answer {answer!r} is not among its choices")
            choices = tuple(choices)
        examples.append(Example(prompt, answer, choices))
    return examples


# --------------------------------------------------------------------------- loading and splits


def load_task(spec: str) -> Task:
    """``bigbench:NAME`` or ``jsonl:PATH`` (a bare path ending in .jsonl works too)."""
    kind, _, rest = spec.partition(":")
    if kind == "bigbench" and rest:
        path = bigbench_task_file(rest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict) and "examples" not in data:
            _refuse_parent_task(rest.strip("/"))
        examples = parse_bigbench(data, str(path))
    elif kind == "jsonl" and rest:
        examples = parse_jsonl(Path(rest).expanduser())
    elif spec.endswith(".jsonl"):
        examples = parse_jsonl(Path(spec).expanduser())
    else:
        raise UserError(f"unknown task {spec!r}: use bigbench:NAME or jsonl:PATH")
    if not examples:
        raise UserError(f"task {spec!r} has no examples")
    kinds = {e.choices is None for e in examples}
    if len(kinds) > 1:
        raise UserError(f"task {spec!r} mixes choice and open-answer examples; split it in two")
    return Task(spec, examples)


def split(
    task: Task,
    n_calib: int = 100,
    n_eval: int = 100,
    n_test: int | None = 1000,
    seed: int = 0,
    protocol: str = "c2i",
) -> Splits:
    """Deterministic, disjoint splits.

    ``c2i``: shuffle with ``seed``; the first ``n_calib`` examples are the
    calibration sample (gradients), the next ``n_eval`` the evaluation sample
    (the search), the rest the test split.
    ``laser``: LASER's protocol; the first 20% (file order) is validation, the
    rest test; the calibration sample is the first ``n_calib`` of validation.
    ``n_test`` caps the test split (a seeded sample of it); None keeps it whole.
    """
    ex = list(task.examples)
    if protocol == "c2i":
        if n_calib < 1 or n_eval < 1:
            raise UserError("--samples and --eval-samples must be at least 1")
        if n_calib + n_eval >= len(ex):
            raise UserError(
                f"task {task.name} has {len(ex)} examples: too few for {n_calib} calibration "
                f"+ {n_eval} evaluation examples and a test split; lower --samples/--eval-samples"
            )
        random.Random(seed).shuffle(ex)
        calib, evl, test = ex[:n_calib], ex[n_calib : n_calib + n_eval], ex[n_calib + n_eval :]
    elif protocol == "laser":
        n_val = max(1, len(ex) // 5)
        evl, test = ex[:n_val], ex[n_val:]
        calib = evl[:n_calib]
        if not test:
            raise UserError(f"task {task.name} has too few examples for LASER's 20/80 split")
    else:
        raise UserError(f"unknown split protocol {protocol!r}: use c2i or laser")
    if n_test is not None and len(test) > n_test:
        test = random.Random(seed + 1).sample(test, n_test)
    return Splits(calib, evl, test, protocol,
                  {"calib": len(calib), "eval": len(evl), "test": len(test), "all": len(ex)})
