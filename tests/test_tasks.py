import json

import pytest

from edge_c2i.errors import EdgeC2IError
from edge_c2i.tasks import MIN_SPLIT, examples_for, load_task, parse_bigbench, split


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
def test_bigbench_tasks_load_with_their_prompt_format(name, n, choice):
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
    task = load_task("bigbench:epistemic_reasoning")
    a, b = split(task, seed=3), split(task, seed=3)
    assert a.calib == b.calib and a.eval == b.eval and a.test == b.test
    assert (len(a.calib), len(a.eval), len(a.test)) == (100, 100, 1000)
    ids = lambda xs: {id(x) for x in xs}
    assert not ids(a.calib) & ids(a.eval) and not ids(a.eval) & ids(a.test)
    assert split(task, seed=4).calib != a.calib


def test_laser_protocol_is_first_fifth_validation():
    task = load_task("bigbench:epistemic_reasoning")
    s = split(task, protocol="laser", n_test=None)
    assert s.eval == task.examples[:400] and s.test == task.examples[400:]


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


def test_bad_task_names():
    with pytest.raises(EdgeC2IError, match="no such task file"):
        load_task("jsonl:/nonexistent/x.jsonl")
    with pytest.raises(EdgeC2IError, match="unknown task"):
        load_task("squad")
    with pytest.raises(EdgeC2IError, match="unknown BIG-bench task"):
        load_task("bigbench:no_such_task_here")


def test_a_task_split_in_subtasks_names_them():
    # fact_checker's own task.json has no examples; its subtasks have
    with pytest.raises(EdgeC2IError, match="split in subtasks; pick one: ") as err:
        load_task("bigbench:fact_checker")
    named = str(err.value).split("pick one: ")[1].split(", ")
    assert "bigbench:fact_checker/fever" in named and "bigbench:fact_checker/" not in named


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


def test_bigbench_tasks_keep_their_own_prompts(capsys):
    task = load_task("bigbench:qa_wikidata")
    ex = task.examples[0]
    assert ex.prompt.endswith(" ") and not ex.answer.startswith(" ")  # encode moves the space
    assert task.delimited == 0 and task.target_delimiter is None
    # BIG-bench's own repeats are kept, as LASER and the recorded numbers have them
    assert task.duplicates_kept > 0 and task.duplicates_dropped == 0
    assert load_task("bigbench:qa_wikidata", target_delimiter=" ").examples == task.examples
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
