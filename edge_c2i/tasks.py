"""Tasks: lists of (prompt, answer[, choices]) examples, their loaders and their splits.

Three sources:

- ``bigbench:NAME`` reads a task.json of the ``bigbench==1.0.0`` sdist from PyPI
  (fetched once with ``pip download --no-deps``; only the task files used are
  extracted).  Nested tasks are addressed by path: ``bigbench:fact_checker/fever``.
  ``$EDGE_C2I_BIGBENCH`` names a copy to read instead, where the package index does not
  serve that sdist: the sdist file, or a checkout of github.com/google/BIG-bench.
- ``bundled:NAME``: a JSONL task that ships with edge-c2i and needs no download
  (edge_c2i/tasks_data: ``continents``, a city's continent among six choices, and
  ``continents-open``, the same as an open answer; from the time zone database's
  zone.tab, see make_continents.py).
- ``jsonl:PATH``: one JSON object a line,
  ``{"prompt": str, "answer": str, "choices": [str, ...]}``; with ``choices`` it
  is a choice task whose gold is ``answer``, without it an open-answer task.
  A target delimiter (default one space) goes between the prompt and each
  answer or choice when neither side has whitespace there, as
  lm-evaluation-harness's ``target_delimiter`` does: ``"The capital of France
  is"`` + ``"Paris"`` is scored as `` Paris`` after the prompt, not ``isParis``.

The prompt is built from the task's own prefixes as BIG-bench builds it:
``task_prefix + example_input_prefix + input + example_output_prefix`` (defaults
``"\\nQ: "`` and ``"\\nA: "``), and the answer follows it.  Unlike BIG-bench's
default (``append_choices_to_input``), the choices of a multiple-choice task are
not listed in the prompt: each is scored as a continuation of it, as LASER does.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgeC2IError, note
from .paths import home

BIGBENCH_SDIST = "bigbench==1.0.0"
BIGBENCH_ENV = "EDGE_C2I_BIGBENCH"  # a BIG-bench sdist or checkout to read instead
TASKS_DIR = "bigbench/benchmark_tasks/"  # where the task folders are, in both
BUNDLED = Path(__file__).with_name("tasks_data")  # bundled:NAME is BUNDLED/NAME.jsonl
TARGET_DELIMITER = " "  # JSONL default, lm-evaluation-harness's
DELIMITER_KEY = "target_delimiter"  # per line, or alone on a line for the lines after it
MIN_SPLIT = 10  # fewer examples cannot give calibration, evaluation and test samples
SPLIT_NAMES = ("test", "eval", "calib", "all")


def warn(message: str) -> None:
    """A warning for the user on stderr (stdout carries only results)."""
    note(f"warning: {message}")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None  # None: open answer
    aliases: tuple[str, ...] = ()  # other accepted answers of an open question
    # where it comes from ("data.jsonl:12"), for messages; not part of its identity
    source: str = field(default="", compare=False)


@dataclass
class Task:
    name: str
    examples: list[Example]
    target_delimiter: str | None = None  # JSONL: the default delimiter; BIG-bench: None
    delimited: int = 0  # examples whose answer or choices got the delimiter
    duplicates_dropped: int = 0  # JSONL: exact repeats of an earlier line, dropped
    duplicates_kept: int = 0  # BIG-bench: exact repeats, kept as published

    @property
    def is_choice(self) -> bool:
        return self.examples[0].choices is not None

    @property
    def notes(self) -> dict:
        """What loading did to the file, for eval and report JSON."""
        return {"task_examples": len(self.examples), "target_delimiter": self.target_delimiter,
                "delimited": self.delimited, "duplicates_dropped": self.duplicates_dropped,
                "duplicates_kept": self.duplicates_kept}


@dataclass
class Splits:
    calib: list[Example]
    eval: list[Example]
    test: list[Example]
    protocol: str = "c2i"
    sizes: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)  # split()'s arguments: the same splits again


# --------------------------------------------------------------------------- BIG-bench


class BigBenchUnavailable(EdgeC2IError):
    """The BIG-bench tasks cannot be had: the sdist did not download and none was given."""


_UNAVAILABLE: list[str] = []  # why the download failed, once per process (pip takes seconds)


def bigbench_source() -> Path:
    """Where the BIG-bench tasks are read: ``$EDGE_C2I_BIGBENCH`` (a BIG-bench sdist, or a
    checkout of github.com/google/BIG-bench: its ``bigbench/benchmark_tasks`` folder), else
    the ``bigbench==1.0.0`` sdist, downloaded once from the package index."""
    given = os.environ.get(BIGBENCH_ENV, "")
    if not given:
        return bigbench_archive()
    path = Path(given).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for root in (path / TASKS_DIR, path / "benchmark_tasks", path):
            if root.name == "benchmark_tasks" and root.is_dir():
                return root
        raise EdgeC2IError(f"{BIGBENCH_ENV}={given} has no bigbench/benchmark_tasks folder; "
                           "point it at a checkout of https://github.com/google/BIG-bench or at "
                           "its sdist (bigbench-1.0.0.tar.gz)")
    raise EdgeC2IError(f"{BIGBENCH_ENV}={given}: no such file or folder")


def bigbench_archive() -> Path:
    """The bigbench sdist, downloaded once from the package index into the cache dir."""
    folder = home() / "bigbench"
    found = sorted(folder.glob("bigbench-1.0.0*.tar.gz"))
    if found:
        return found[0]
    if _UNAVAILABLE:
        raise BigBenchUnavailable(_UNAVAILABLE[0])
    folder.mkdir(parents=True, exist_ok=True)
    note(f"downloading {BIGBENCH_SDIST} (358 MB, once) into {folder}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--quiet", "-d", str(folder), BIGBENCH_SDIST]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    found = sorted(folder.glob("bigbench-1.0.0*.tar.gz"))
    if run.returncode != 0 or not found:
        errors = [line.strip() for line in run.stderr.splitlines() if line.startswith("ERROR")]
        why = errors[-1].removeprefix("ERROR: ") if errors else f"pip exited with {run.returncode}"
        _UNAVAILABLE.append(
            f"could not download {BIGBENCH_SDIST} from the package index ({why}); set "
            f"{BIGBENCH_ENV} to a copy of that sdist or to a checkout of "
            "https://github.com/google/BIG-bench, or use a task that needs no download: "
            f"{', '.join('bundled:' + n for n in bundled_tasks())} or jsonl:PATH")
        raise BigBenchUnavailable(_UNAVAILABLE[0])
    return found[0]


def _task_files(source: Path):
    """(path under benchmark_tasks, e.g. ``fact_checker/fever/task.json``, member) of every
    task file of an sdist, in one streaming pass; a generator, so a caller may stop early."""
    try:
        tar = tarfile.open(source)  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise EdgeC2IError(f"{source} is not a readable BIG-bench sdist ({e}); point "
                           f"{BIGBENCH_ENV} at bigbench-1.0.0.tar.gz or a BIG-bench checkout"
                           ) from None
    with tar:
        for member in tar:
            _, found, rest = member.name.partition(TASKS_DIR)
            yield (rest if found else None), tar, member


def bigbench_task_file(name: str) -> Path:
    """The JSON file of a BIG-bench task: in the checkout, or extracted (once) from the sdist."""
    name = name.strip("/")
    source = bigbench_source()
    wanted = {f"{name}/{f}": f for f in ("task.json", "task_mc.json")}  # truthful_qa: _mc
    if source.is_dir():
        for rel in wanted:
            if (source / rel).is_file():
                return source / rel
        seen = [p.relative_to(source).as_posix() for p in source.glob(f"{name}/**/task.json")]
        _refuse_parent_task(name, seen)
        _refuse_unknown(name, source)
    out_dir = home() / "bigbench" / "tasks"
    if os.environ.get(BIGBENCH_ENV):  # a given sdist's tasks apart from the downloaded one's
        out_dir = out_dir / source.name
    out_dir = out_dir / name
    for fname in wanted.values():
        if (out_dir / fname).is_file():
            return out_dir / fname
    seen = []  # every task file in the archive, if the task is not found
    for rel, tar, member in _task_files(source):
        if rel in wanted and member.isfile():
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / wanted[rel]
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(tar.extractfile(member).read())
            tmp.rename(target)
            return target
        if rel:
            seen.append(rel)
    _refuse_parent_task(name, seen)
    _refuse_unknown(name, source)


def _refuse_unknown(name: str, source: Path) -> None:
    raise EdgeC2IError(f"unknown BIG-bench task {name!r}: no task.json for it in {source} "
                       "(nested tasks are addressed by path, e.g. bigbench:fact_checker/fever)")


def _refuse_parent_task(name: str, names: list[str] | None = None) -> None:
    """A task split in subtasks (its own task.json, if any, has no examples): name them.

    ``names``: the task files' paths under benchmark_tasks, if a pass already read them.
    """
    if names is None:
        source = bigbench_source()
        names = ([p.relative_to(source).as_posix() for p in source.glob(f"{name}/**/task.json")]
                 if source.is_dir() else [rel for rel, _, _ in _task_files(source) if rel])
    below = f"{name}/"
    subtasks = sorted(f"bigbench:{name}/{n[len(below):-len('/task.json')]}" for n in names
                      if n.startswith(below) and n.endswith("/task.json")
                      and n != f"{below}task.json")
    if subtasks:
        raise EdgeC2IError(f"BIG-bench task {name!r} is split in subtasks; pick one: "
                           + ", ".join(subtasks))


def parse_bigbench(data: dict, source: str) -> list[Example]:
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise EdgeC2IError(f"{source}: not a BIG-bench task (no 'examples' list)")
    task_prefix = data.get("task_prefix", "")
    in_prefix = data.get("example_input_prefix", "\nQ: ")
    out_prefix = data.get("example_output_prefix", "\nA: ")
    examples = []
    for i, ex in enumerate(data["examples"]):
        where = f"{source}: example {i}"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise EdgeC2IError(f"{where}: no 'input' string")
        prompt = task_prefix + in_prefix + ex["input"] + out_prefix
        if isinstance(ex.get("target_scores"), dict) and ex["target_scores"]:
            scores = ex["target_scores"]
            choices = tuple(scores)
            gold = max(choices, key=lambda c: scores[c])
            examples.append(Example(prompt, gold, choices, source=where))
        elif "target" in ex:
            targets = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
            targets = [t for t in targets if isinstance(t, str) and t.strip()]
            if not targets:
                raise EdgeC2IError(f"{where}: empty 'target'")
            examples.append(Example(prompt, targets[0], None, tuple(targets[1:]), where))
        else:
            raise EdgeC2IError(f"{where}: neither 'target_scores' nor 'target'")
    return examples


# --------------------------------------------------------------------------- JSONL


def delimit(prompt: str, text: str, delimiter: str) -> str:
    """``text`` as it follows ``prompt``: ``delimiter`` first when neither side has whitespace
    at the seam.  Written naturally, ``"... France is"`` + ``"Paris"`` would be scored as
    ``isParis``, a word no model predicts (SmolLM2 on 30 capitals: 0.00, and 0.73 with the space).
    An empty prompt has no seam."""
    if prompt and delimiter and not prompt[-1].isspace() and not text[:1].isspace():
        return delimiter + text
    return text


def _decode(raw: bytes, lineno: int, where: str) -> str:
    try:  # a byte-order mark may open the file
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise EdgeC2IError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line); "
                           "save the file as UTF-8") from None


def _jsonl_example(obj: dict, delimiter: str, where: str) -> tuple[Example, bool]:
    """One line's example, the delimiter applied; True when it added the delimiter."""
    prompt, answer, choices = obj.get("prompt"), obj.get("answer"), obj.get("choices")
    if not isinstance(prompt, str) or not isinstance(answer, str) or not answer.strip():
        keys = "" if {"prompt", "answer"} <= set(obj) else f" (found keys: {', '.join(obj)})"
        raise EdgeC2IError(f"{where}: 'prompt' and a non-empty 'answer' must be strings{keys}")
    if choices is None:
        joined = delimit(prompt, answer, delimiter)
        return Example(prompt, joined, source=where), joined != answer
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise EdgeC2IError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if answer not in choices:
        raise EdgeC2IError(f"{where}: the answer {answer!r} is not among its choices")
    joined = tuple(delimit(prompt, c, delimiter) for c in choices)
    for j, c in enumerate(joined):
        if c in joined[:j]:  # ties with itself: accuracy 1.0 whenever it is the gold
            same = choices[joined.index(c)]
            how = "twice" if same == choices[j] else f"twice ({same!r} with the delimiter)"
            raise EdgeC2IError(f"{where}: the choice {choices[j]!r} is listed {how}; "
                               "list each choice once")
    gold = joined[choices.index(answer)]
    return Example(prompt, gold, joined, source=where), joined != tuple(choices)


JSONL_KEYS = ("prompt", "answer", "choices")


def parse_jsonl(path: Path, target_delimiter: str = TARGET_DELIMITER) -> tuple[list[Example], set]:
    """The examples of a JSONL file, and those of them that got the target delimiter.

    A line ``{"target_delimiter": "..."}`` (that key alone) sets the delimiter of the
    lines after it, the file's own setting; the key on an example line sets that line's.
    Lines are cut at ``\n`` only: a JSON string may hold U+2028, which str.splitlines cuts.
    """
    if not path.is_file():
        raise EdgeC2IError(f"no such task file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeC2IError(f"cannot read {path}: {e.strerror}") from None
    examples, delimited, unknown = [], set(), {}
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        line = _decode(raw, lineno, where)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgeC2IError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise EdgeC2IError(f"{where}: expected an object with 'prompt' and 'answer'")
        delimiter = obj.get(DELIMITER_KEY, target_delimiter)
        if not isinstance(delimiter, str):
            raise EdgeC2IError(f"{where}: '{DELIMITER_KEY}' must be a string, like \" \" or \"\"")
        if set(obj) == {DELIMITER_KEY}:
            target_delimiter = delimiter
            continue
        example, added = _jsonl_example(obj, delimiter, where)
        examples.append(example)
        if added:
            delimited.add(example)
        for key in obj.keys() - {*JSONL_KEYS, DELIMITER_KEY}:
            unknown.setdefault(key, where)
    _warn_misspelt(unknown)
    return examples, delimited


def _warn_misspelt(unknown: dict[str, str]) -> None:
    """Warn of a key that looks meant as one edge-c2i reads ("Choices", "options"): ignored,
    it would turn a multiple-choice task into an open-answer one without a word.  Other
    keys (an id, a source) are the file's own and pass quietly."""
    import difflib

    aliases = {"options": "choices", "targets": "choices", "target": "answer",
               "input": "prompt", "question": "prompt"}
    for key, where in unknown.items():
        meant = (aliases.get(key.lower())
                 or next(iter(difflib.get_close_matches(key.lower(), JSONL_KEYS, 1, 0.75)), None))
        if meant:
            warn(f"{where}: the key {key!r} is not read (edge-c2i reads {', '.join(JSONL_KEYS)}); "
                 f"rename it to {meant!r} if that is what it holds")


def drop_duplicates(examples: list[Example], name: str) -> tuple[list[Example], int]:
    """The examples without exact repeats (same prompt, answer and choices), and their count.

    A repeated line would land in the calibration, evaluation and test samples at once,
    so a test score would partly measure what the search was tuned on.  It carries
    nothing a single copy does not, so it is dropped (with a warning) rather than
    refused: the file stays usable as it is.
    """
    first: dict[Example, Example] = {}
    for ex in examples:
        first.setdefault(ex, ex)
    dropped = len(examples) - len(first)
    if dropped:
        repeat = next(ex for ex in examples if first[ex] is not ex)
        warn(f"task {name}: dropped {dropped} line(s) that repeat an earlier one (e.g. "
             f"{repeat.source} repeats line {first[repeat].source.rpartition(':')[2]}), so that "
             "no example is in two of the calibration, evaluation and test samples")
    return list(first.values()), dropped


# --------------------------------------------------------------------------- loading and splits


def bundled_tasks() -> list[str]:
    """The tasks that ship with edge-c2i (``bundled:NAME``; edge_c2i/tasks_data)."""
    return sorted(p.stem for p in BUNDLED.glob("*.jsonl"))


def load_task(spec: str, target_delimiter: str | None = None) -> Task:
    """``bigbench:NAME``, ``bundled:NAME`` or ``jsonl:PATH`` (a bare path ending in .jsonl
    works too).

    ``target_delimiter`` (JSONL; default one space) goes between a prompt and its
    answer or choices when neither has whitespace there (``delimit``); a file's own
    ``{"target_delimiter": ...}`` line, and the key on an example's line, win over it.
    BIG-bench tasks carry their own prefixes and are left as BIG-bench builds them.
    """
    if target_delimiter is not None and not isinstance(target_delimiter, str):
        raise EdgeC2IError("the target delimiter must be a string, like ' ' or ''")
    kind, _, rest = spec.partition(":")
    delimiter, delimited = None, set()
    if kind == "bigbench" and rest:
        if target_delimiter is not None:
            warn("the target delimiter applies to jsonl tasks; BIG-bench tasks keep their "
                 "own prefixes")
        path = bigbench_task_file(rest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EdgeC2IError(f"{path}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict) and "examples" not in data:
            _refuse_parent_task(rest.strip("/"))
        examples = parse_bigbench(data, str(path))
    elif (kind in ("jsonl", "bundled") and rest) or spec.endswith(".jsonl"):
        delimiter = TARGET_DELIMITER if target_delimiter is None else target_delimiter
        if kind == "bundled":
            if rest not in bundled_tasks():
                raise EdgeC2IError(f"unknown bundled task {rest!r}: edge-c2i ships "
                                   + ", ".join(f"bundled:{n}" for n in bundled_tasks()))
            path = BUNDLED / f"{rest}.jsonl"
        else:
            path = Path(rest if kind == "jsonl" else spec).expanduser()
        examples, delimited = parse_jsonl(path, delimiter)
    else:
        raise EdgeC2IError(f"unknown task {spec!r}: use bigbench:NAME, bundled:NAME or "
                           "jsonl:PATH")
    if not examples:
        raise EdgeC2IError(f"task {spec!r} has no examples")
    kinds = {e.choices is None for e in examples}
    if len(kinds) > 1:
        raise EdgeC2IError(f"task {spec!r} mixes choice and open-answer examples; split it in two")
    if kind == "bigbench":  # kept as published: LASER's and the recorded numbers use them
        return Task(spec, examples, duplicates_kept=len(examples) - len(set(examples)))
    examples, dropped = drop_duplicates(examples, spec)
    delimited = sum(e in delimited for e in examples) if delimited else 0  # of those kept
    return Task(spec, examples, delimiter, delimited, dropped)


def _scaled(n: int, n_calib: int, n_eval: int) -> tuple[int, int]:
    """Calibration and evaluation sizes that leave the test split a third of ``n``.

    On a task of 219 examples, 100 + 100 left 19 to test on: a score on 19 examples
    says little, so the two samples shrink in proportion instead.
    """
    room = n - n // 3
    if n_calib + n_eval <= room:
        return n_calib, n_eval
    calib = max(1, room * n_calib // (n_calib + n_eval))
    return calib, room - calib


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
    (the search), the rest the test split.  When that would leave the test split
    less than a third of the task, both samples are scaled down (a warning says
    to what; ``sizes["requested"]`` keeps what was asked).  A task of fewer than
    ``MIN_SPLIT`` examples is refused: it can be evaluated whole (``examples_for``).
    ``laser``: LASER's protocol; the first 20% (file order) is validation, the
    rest test; the calibration sample is the first ``n_calib`` of validation.
    ``n_test`` caps the test split (a seeded sample of it); None keeps it whole.
    """
    ex = list(task.examples)
    if n_calib < 1 or n_eval < 1:
        raise EdgeC2IError("n_calib and n_eval must be at least 1")
    if n_test is not None and n_test < 1:
        raise EdgeC2IError("n_test must be at least 1")
    if len(ex) < MIN_SPLIT:
        raise EdgeC2IError(
            f"task {task.name} has {len(ex)} examples: too few to split into calibration, "
            f"evaluation and test samples (at least {MIN_SPLIT}); add examples, or evaluate "
            "all of them (eval --split all)"
        )
    requested = {}
    if protocol == "c2i":
        calib_n, eval_n = _scaled(len(ex), n_calib, n_eval)
        if (calib_n, eval_n) != (n_calib, n_eval):
            requested = {"requested": {"calib": n_calib, "eval": n_eval}}
            warn(f"task {task.name} has {len(ex)} examples: too few for {n_calib} calibration "
                 f"+ {n_eval} evaluation examples and a test split of at least a third; "
                 f"using {calib_n} + {eval_n}, and {len(ex) - calib_n - eval_n} to test")
        random.Random(seed).shuffle(ex)
        calib, evl, test = ex[:calib_n], ex[calib_n : calib_n + eval_n], ex[calib_n + eval_n :]
    elif protocol == "laser":
        n_val = max(1, len(ex) // 5)
        evl, test = ex[:n_val], ex[n_val:]
        calib = evl[:n_calib]
    else:
        raise EdgeC2IError(f"unknown split protocol {protocol!r}: use c2i or laser")
    if n_test is not None and len(test) > n_test:
        test = random.Random(seed + 1).sample(test, n_test)
    return Splits(calib, evl, test, protocol,
                  {"calib": len(calib), "eval": len(evl), "test": len(test), "all": len(ex),
                   **requested},
                  {"n_calib": n_calib, "n_eval": n_eval, "n_test": n_test, "seed": seed,
                   "protocol": protocol})


def split_args_for(manifest: dict, task: str, seed: int, which: str, where: str) -> dict:
    """``examples_for``'s arguments for a model that ``manifest`` (an adapted folder's or an
    export's) says a run chose on ``task``: that run's splits, so that the test split holds
    none of the examples it chose on.  Else (another task, a plain model) ``seed`` and the
    default sizes; an explicit ``seed`` other than the run's wins, with a warning."""
    recorded = manifest.get("split") if manifest.get("task") == task else None
    if not isinstance(recorded, dict):
        return {"seed": seed}
    if seed not in (0, recorded.get("seed")):
        warn(f"--seed {seed}: {where} was chosen with seed {recorded.get('seed')}, so this "
             f"{which} split holds examples the run chose on; drop --seed to score the run's")
        return {"seed": seed}
    keys = ("seed", "n_calib", "n_eval", "n_test", "protocol")
    return {k: recorded[k] for k in keys if k in recorded}


def examples_for(task: Task, which: str = "test", seed: int = 0, n_calib: int = 100,
                 n_eval: int = 100, n_test: int | None = 1000,
                 protocol: str = "c2i") -> list[Example]:
    """The examples of one split (``test``, ``eval``, ``calib``) or ``all`` of the task.

    What ``eval`` scores.  ``all`` is every example, in file order.  A task too small to
    split (fewer than ``MIN_SPLIT``) is evaluated whole, with a warning: nothing can have
    been adapted on a part of it, since ``adapt`` refuses it.
    """
    if which not in SPLIT_NAMES:
        raise EdgeC2IError(f"unknown split {which!r}: use one of {', '.join(SPLIT_NAMES)}")
    if which == "all":
        return list(task.examples)
    if len(task.examples) < MIN_SPLIT:
        warn(f"task {task.name} has {len(task.examples)} examples, too few to split; "
             f"evaluating all of them instead of the {which} split")
        return list(task.examples)
    splits = split(task, n_calib, n_eval, n_test, seed, protocol)
    return {"test": splits.test, "eval": splits.eval, "calib": splits.calib}[which]
