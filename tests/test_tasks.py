import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import write_bigbench

from edge_c2i import tasks as T
from edge_c2i.errors import EdgeC2IError
from edge_c2i.tasks import MIN_SPLIT, examples_for, load_task, parse_bigbench, split

# a BIG-bench of four tasks, as its checkout and its sdist lay them out
FAKE = {
    "tiny/task.json": {"task_prefix": "Say it.", "examples": [
        {"input": "one", "target": ["1", "uno"]}, {"input": "two", "target": "2"},
        {"input": "one", "target": ["1", "uno"]}]},  # BIG-bench's own repeats are kept
    "parent/task.json": {"name": "parent"},  # split in subtasks: no examples of its own
    "parent/sub/task.json": {"example_output_prefix": "\nRelation: ", "examples": [
        {"input": "a", "target_scores": {"yes": 1, "no": 0}}]},
    "mc/task_mc.json": {"examples": [{"input": "q", "target_scores": {"x": 0, "y": 1}}]},
}


def write(path, rows) -> str:
    """A JSONL file of ``rows`` (objects, or raw strings written as they are); its task spec."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f"jsonl:{path}"


def numbered(n: int) -> list[dict]:
    return [{"prompt": f"question {i}:", "answer": f"a{i}"} for i in range(n)]


@pytest.mark.parametrize("name,n,choice", [
    ("epistemic_reasoning", 2000, True),
    ("qa_wikidata", 20442, False),
    ("fact_checker/fever", 6612, True),
    ("truthful_qa", 299, True),
])
def test_bigbench_tasks_load_with_their_prompt_format(needs_bigbench, name, n, choice):
    task = load_task(f"bigbench:{name}")
    assert len(task.examples) == n and task.is_choice == choice
    ex = task.examples[0]
    if choice:
        assert ex.answer in ex.choices
    if name == "epistemic_reasoning":
        assert ex.prompt.startswith("Identify the relation") and ex.prompt.endswith("\nRelation: ")
        assert set(ex.choices) == {"entailment", "non-entailment"}
    if name == "fact_checker/fever":
        assert ex.prompt.endswith("true or false?\nA: ")


def test_splits_are_deterministic_and_disjoint():
    task = load_task("bundled:continents")
    a, b = split(task, seed=3), split(task, seed=3)
    assert a.calib == b.calib and a.eval == b.eval and a.test == b.test
    assert (len(a.calib), len(a.eval), len(a.test)) == (100, 100, 134)
    ids = lambda xs: {id(x) for x in xs}
    assert not ids(a.calib) & ids(a.eval) and not ids(a.eval) & ids(a.test)
    assert split(task, seed=4).calib != a.calib


def test_laser_protocol_is_first_fifth_validation():
    task = load_task("bundled:continents")
    s = split(task, protocol="laser", n_test=None)
    assert s.eval == task.examples[:66] and s.test == task.examples[66:]


def test_jsonl_choice_and_open_tasks(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "2+2=", "answer": "4", "choices": ["4", "5"]}\n\n'
                 '{"prompt": "1+1=", "answer": "2", "choices": ["2", "3"]}\n')
    task = load_task(f"jsonl:{f}")
    assert task.is_choice and len(task.examples) == 2
    g = tmp_path / "open.jsonl"
    g.write_text(json.dumps({"prompt": "The capital of France is", "answer": "Paris"}) + "\n")
    assert not load_task(str(g)).is_choice


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "x", "answer": "a"}\nnot json\n', r"t.jsonl:2: not valid JSON"),
    ('{"prompt": "x", "answer": "c", "choices": ["a", "b"]}\n',
     r"t.jsonl:1: the answer 'c' is not"),
    ('{"prompt": "x"}\n', r"t.jsonl:1: 'prompt' and a non-empty 'answer'"),
    ('{"prompt": "x", "answer": "a", "choices": "ab"}\n', r"t.jsonl:1: 'choices' must be a list"),
    ("\n", r"has no examples"),
    ('{"prompt": "x", "answer": "a"}\n{"prompt": "y", "answer": "a", "choices": ["a", "b"]}\n',
     "mixes choice and open"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    f = tmp_path / "t.jsonl"
    f.write_text(content)
    with pytest.raises(EdgeC2IError, match=message):
        load_task(f"jsonl:{f}")


@pytest.fixture(params=["checkout", "sdist"])
def fake_bigbench(request, tmp_path, monkeypatch):
    """FAKE as $EDGE_C2I_BIGBENCH: a checkout, or an sdist (extracted into a cache of the
    test's own)."""
    root = write_bigbench(tmp_path / "BIG-bench", FAKE)
    if request.param == "sdist":
        with tarfile.open(tmp_path / "bigbench-9.9.tar.gz", "w:gz") as tar:
            tar.add(root / "bigbench", "bigbench-9.9/bigbench")
        root = tmp_path / "bigbench-9.9.tar.gz"
    monkeypatch.setenv("EDGE_C2I_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(T.BIGBENCH_ENV, str(root))
    return root


def test_bad_task_names(fake_bigbench):
    with pytest.raises(EdgeC2IError, match="no such task file"):
        load_task("jsonl:/nonexistent/x.jsonl")
    with pytest.raises(EdgeC2IError, match="unknown task"):
        load_task("squad")
    with pytest.raises(EdgeC2IError, match="unknown BIG-bench task 'no_such_task_here'"):
        load_task("bigbench:no_such_task_here")
    with pytest.raises(EdgeC2IError, match="unknown bundled task 'x': edge-c2i ships "
                                           "bundled:continents, bundled:continents-open$"):
        load_task("bundled:x")


def test_a_task_split_in_subtasks_names_them(fake_bigbench):
    with pytest.raises(EdgeC2IError, match="split in subtasks; pick one: ") as err:
        load_task("bigbench:parent")
    named = str(err.value).split("pick one: ")[1].split(", ")
    assert named == ["bigbench:parent/sub"]


def test_bigbench_from_a_checkout_or_an_sdist(fake_bigbench, tmp_path):
    sub = load_task("bigbench:parent/sub")
    assert sub.examples[0].prompt == "\nQ: a\nRelation: " and sub.examples[0].answer == "yes"
    assert load_task("bigbench:mc").examples[0].answer == "y"  # only a task_mc.json
    tiny = load_task("bigbench:tiny")
    assert [e.answer for e in tiny.examples] == ["1", "2", "1"]
    assert tiny.examples[0].aliases == ("uno",)
    # a given sdist's tasks are extracted once, under the cache, by the sdist's name
    cached = sorted(p.relative_to(tmp_path / "home") for p in (tmp_path / "home").rglob("*.json"))
    if fake_bigbench.is_file():
        assert [str(p) for p in cached] == [f"bigbench/tasks/bigbench-9.9.tar.gz/{t}" for t in
                                            ("mc/task_mc.json", "parent/sub/task.json",
                                             "tiny/task.json")]
    else:
        assert cached == []  # a checkout is read in place


def test_bigbench_given_where_there_is_none_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(T.BIGBENCH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(EdgeC2IError, match=r"EDGE_C2I_BIGBENCH=.*nowhere: no such file or folder"):
        load_task("bigbench:tiny")
    monkeypatch.setenv(T.BIGBENCH_ENV, str(tmp_path))
    with pytest.raises(EdgeC2IError, match="has no bigbench/benchmark_tasks folder; point it at"):
        load_task("bigbench:tiny")
    (tmp_path / "notes.txt").write_text("not an archive")
    monkeypatch.setenv(T.BIGBENCH_ENV, str(tmp_path / "notes.txt"))
    monkeypatch.setenv("EDGE_C2I_HOME", str(tmp_path / "home"))
    with pytest.raises(EdgeC2IError, match="notes.txt is not a readable BIG-bench sdist"):
        load_task("bigbench:tiny")


def test_bigbench_the_index_does_not_serve_is_one_line_with_the_ways_out(tmp_path, monkeypatch):
    """A package index without the sdist (as on a mirror that leaves it out): pip's reason,
    what to set, what needs no download; asked once per process, and exit 2 from the CLI."""
    env = dict(os.environ)  # the CLI below: the converted model in the user's cache
    monkeypatch.delenv(T.BIGBENCH_ENV, raising=False)
    monkeypatch.setenv("EDGE_C2I_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(T, "BIGBENCH_SDIST", "bigbench==0.0.0.999")  # no index has it
    monkeypatch.setattr(T, "_UNAVAILABLE", [])
    with pytest.raises(T.BigBenchUnavailable) as err:
        load_task("bigbench:qa_wikidata")
    message = str(err.value)
    assert "could not download bigbench==0.0.0.999 from the package index (" in message
    assert "set EDGE_C2I_BIGBENCH to a copy of that sdist" in message
    assert message.endswith("bundled:continents, bundled:continents-open or jsonl:PATH")
    with monkeypatch.context() as m:
        m.setattr(T.subprocess, "run", None)  # the second ask does not run pip again
        with pytest.raises(T.BigBenchUnavailable, match="could not download"):
            load_task("bigbench:qa_wikidata")
    env[T.BIGBENCH_ENV] = str(tmp_path / "nowhere")
    run = subprocess.run([sys.executable, "-m", "edge_c2i.cli", "eval", "--task",
                          "bigbench:qa_wikidata"], capture_output=True, text=True, check=False,
                         env=env)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        f"edge-c2i: error: {T.BIGBENCH_ENV}={tmp_path / 'nowhere'}: no such file or folder"]


@pytest.mark.parametrize("name,choice", [("continents", True), ("continents-open", False)])
def test_the_bundled_tasks_need_no_download(tmp_path, monkeypatch, name, choice):
    monkeypatch.setenv("EDGE_C2I_HOME", str(tmp_path))
    task = load_task(f"bundled:{name}")
    assert len(task.examples) == 334 and task.is_choice == choice
    ex = task.examples[0]
    assert ex.prompt == "Andorra is a city on the continent of" and ex.answer == " Europe"
    assert not list(tmp_path.iterdir())  # nothing downloaded, nothing cached
    golds = {e.answer for e in task.examples}
    assert golds == {" Africa", " Asia", " Australia", " Europe", " North America",
                     " South America"}


def test_malformed_bigbench_json():
    with pytest.raises(EdgeC2IError, match="no 'examples' list"):
        parse_bigbench({"name": "x"}, "x/task.json")
    with pytest.raises(EdgeC2IError, match="example 1: neither"):
        parse_bigbench({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}, "t.json")




# --------------------------------------------------------------------------- target delimiter


def test_the_target_delimiter_goes_between_prompt_and_answer(tmp_path):
    task = load_task(write(tmp_path / "t.jsonl", [
        {"prompt": "The capital of France is", "answer": "Paris"},  # gets it
        {"prompt": "The capital of Italy is ", "answer": "Rome"},  # space already in the prompt
        {"prompt": "The capital of Spain is", "answer": " Madrid"},  # ... or in the answer
        {"prompt": "Capital of Japan:\n", "answer": "Tokyo"},  # a newline is whitespace too
        {"prompt": "", "answer": "Berlin"},  # no prompt, no seam
    ]))
    assert [e.answer for e in task.examples] == [" Paris", "Rome", " Madrid", "Tokyo", "Berlin"]
    assert task.delimited == 1 and task.target_delimiter == " "
    assert task.notes["delimited"] == 1 and task.notes["task_examples"] == 5


def test_the_delimiter_applies_to_each_choice_and_the_gold_stays_among_them(tmp_path):
    task = load_task(write(tmp_path / "t.jsonl", [
        {"prompt": "2+2=", "answer": "4", "choices": ["4", "5"]},
        {"prompt": "1+1=", "answer": "2", "choices": ["2", " 3"]},
    ]))
    assert [e.choices for e in task.examples] == [(" 4", " 5"), (" 2", " 3")]
    assert [e.answer for e in task.examples] == [" 4", " 2"] and task.delimited == 2


def test_the_delimiter_can_be_changed_per_call_per_file_and_per_line(tmp_path):
    rows = [{"prompt": "France:", "answer": "Paris"},
            {"prompt": "Italy:", "answer": "Rome", "target_delimiter": "\t"}]
    spec = write(tmp_path / "t.jsonl", rows)
    assert [e.answer for e in load_task(spec, target_delimiter="").examples] == ["Paris", "\tRome"]
    spec = write(tmp_path / "h.jsonl", [{"target_delimiter": ""}, *rows])  # the file's setting
    task = load_task(spec, target_delimiter=" ")
    assert [e.answer for e in task.examples] == ["Paris", "\tRome"] and task.delimited == 1
    with pytest.raises(EdgeC2IError, match="h.jsonl:1: 'target_delimiter' must be a string"):
        load_task(write(tmp_path / "h.jsonl", [{"target_delimiter": 1}, *rows]))


def test_bigbench_tasks_keep_their_own_prompts(fake_bigbench, capsys):
    task = load_task("bigbench:tiny")
    ex = task.examples[0]
    assert ex.prompt == "Say it.\nQ: one\nA: " and ex.answer == "1"
    assert task.delimited == 0 and task.target_delimiter is None
    # BIG-bench's own repeats are kept, as LASER and the recorded numbers have them
    assert task.duplicates_kept == 1 and task.duplicates_dropped == 0
    assert load_task("bigbench:tiny", target_delimiter=" ").examples == task.examples
    assert "applies to jsonl tasks" in capsys.readouterr().err


# --------------------------------------------------------------------------- input checks


def test_duplicate_lines_are_dropped_with_a_warning(tmp_path, capsys):
    rows = numbered(30)
    spec = write(tmp_path / "t.jsonl", rows + rows[:3] + [rows[0]])
    task = load_task(spec)
    assert len(task.examples) == 30 and task.duplicates_dropped == 4
    err = capsys.readouterr().err
    assert err.startswith("edge-c2i: warning:") and "dropped 4 line(s)" in err
    assert "t.jsonl:31 repeats line 1)" in err
    s = split(task, 5, 5)
    prompts = [{e.prompt for e in part} for part in (s.calib, s.eval, s.test)]
    assert sum(map(len, prompts)) == len(set.union(*prompts))  # no prompt in two samples


@pytest.mark.parametrize("row,message", [
    ({"prompt": "x", "answer": "a", "choices": ["a", "b", "a"]},
     "t.jsonl:1: the choice 'a' is listed twice"),
    ({"prompt": "x", "answer": "a", "choices": ["a", " a"]},
     r"the choice ' a' is listed twice \('a' with the delimiter\)"),
    ({"prompt": "", "answer": ""}, "t.jsonl:1: 'prompt' and a non-empty 'answer' must be strings$"),
    ({"question": "x", "target": "a"}, r"must be strings \(found keys: question, target\)"),
    ({"prompt": "x", "answer": 4}, "'prompt' and a non-empty 'answer' must be strings"),
])
def test_bad_examples_are_refused_with_their_line(tmp_path, row, message):
    with pytest.raises(EdgeC2IError, match=message):
        load_task(write(tmp_path / "t.jsonl", [row]))


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "caf\xe9", "answer": "b"}\n')
    with pytest.raises(EdgeC2IError, match=r"t.jsonl:2: not UTF-8 text \(byte 16 of the line\)"):
        load_task(f"jsonl:{f}")


def test_a_byte_order_mark_and_a_line_separator_in_a_string_are_fine(tmp_path):
    f = tmp_path / "t.jsonl"
    text = '{"prompt": "a\u2028b", "answer": "c"}\n{"prompt": "d", "answer": "e"}\n'
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [e.prompt for e in load_task(f"jsonl:{f}").examples] == ["a\u2028b", "d"]


# --------------------------------------------------------------------------- small tasks


def test_splits_shrink_to_leave_a_third_to_test(tmp_path, capsys):
    task = load_task(write(tmp_path / "t.jsonl", numbered(219)))
    s = split(task)
    assert s.sizes == {"calib": 73, "eval": 73, "test": 73, "all": 219,
                       "requested": {"calib": 100, "eval": 100}}
    assert "using 73 + 73, and 73 to test" in capsys.readouterr().err
    small = split(load_task(write(tmp_path / "s.jsonl", numbered(30))), n_calib=20, n_eval=5)
    assert (len(small.calib), len(small.eval), len(small.test)) == (16, 4, 10)


def test_a_task_large_enough_keeps_the_requested_sizes(tmp_path, capsys):
    s = split(load_task(write(tmp_path / "t.jsonl", numbered(300))))  # truthful_qa has 299
    assert (len(s.calib), len(s.eval), len(s.test)) == (100, 100, 100)
    assert "requested" not in s.sizes
    assert capsys.readouterr().err == ""


def test_truthful_qa_keeps_the_requested_sizes(needs_bigbench, capsys):
    assert split(load_task("bigbench:truthful_qa")).sizes["test"] == 99
    assert capsys.readouterr().err == ""


def test_a_task_too_small_to_split_is_refused_but_can_be_evaluated_whole(tmp_path, capsys):
    task = load_task(write(tmp_path / "t.jsonl", numbered(MIN_SPLIT - 1)))
    with pytest.raises(EdgeC2IError, match=r"9 examples: too few to split .* \(eval --split all\)"):
        split(task)
    assert examples_for(task, "test") == task.examples
    assert "evaluating all of them instead of the test split" in capsys.readouterr().err
    assert examples_for(task, "all") == task.examples


def test_examples_for_gives_the_split_that_adapt_uses(tmp_path):
    task = load_task(write(tmp_path / "t.jsonl", numbered(50)))
    s = split(task, seed=2)
    assert examples_for(task, "test", seed=2) == s.test
    assert examples_for(task, "calib", seed=2) == s.calib
    assert examples_for(task, "all") == task.examples  # all of it, in file order
    with pytest.raises(EdgeC2IError, match="unknown split 'dev'"):
        examples_for(task, "dev")


@pytest.mark.parametrize("kwargs,message", [
    ({"n_calib": 0}, "n_calib and n_eval must be at least 1"),
    ({"n_test": 0}, "n_test must be at least 1"),
    ({"n_test": -1}, "n_test must be at least 1"),
])
def test_bad_split_sizes(tmp_path, kwargs, message):
    with pytest.raises(EdgeC2IError, match=message):
        split(load_task(write(tmp_path / "t.jsonl", numbered(50))), **kwargs)


def test_the_demo_runs_on_a_bundled_task_where_bigbench_cannot_be_had(tmp_path, monkeypatch,
                                                                         capsys):
    from edge_c2i.config import DEMO_FALLBACK_TASK
    from edge_c2i.export.cli import demo_task

    monkeypatch.delenv(T.BIGBENCH_ENV, raising=False)
    monkeypatch.setenv("EDGE_C2I_HOME", str(tmp_path))  # no sdist downloaded here
    monkeypatch.setattr(T, "_UNAVAILABLE", ["could not download bigbench==1.0.0 (test)"])
    task = demo_task(None, None)  # no --task: the default, else the bundled one, said so
    assert task.name == DEMO_FALLBACK_TASK and not task.is_choice
    err = capsys.readouterr().err
    assert "could not download bigbench==1.0.0 (test)" in err
    assert f"the demo runs on {DEMO_FALLBACK_TASK} instead" in err
    with pytest.raises(T.BigBenchUnavailable):  # a task asked for is never swapped
        demo_task("bigbench:qa_wikidata", None)


def test_a_jsonl_key_that_looks_meant_as_choices_is_warned_of(tmp_path, capsys):
    """A misspelt "choices" turned a multiple-choice task into an open-answer one silently;
    a key of the file's own (an id) passes quietly; `delimited` counts the examples kept."""
    from edge_c2i.tasks import load_task

    path = tmp_path / "t.jsonl"
    lines = [{"prompt": "Is 2 even?", "answer": "yes", "Choices": ["yes", "no"]},
             {"prompt": "Is 3 even?", "answer": "no", "id": 4},
             {"prompt": "Is 3 even?", "answer": "no", "id": 4}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    task = load_task(f"jsonl:{path}")
    err = capsys.readouterr().err
    assert "'Choices' is not read" in err and "'id'" not in err
    assert len(task.examples) == 2 and task.duplicates_dropped == 1 and task.delimited == 2
