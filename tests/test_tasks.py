import json

import pytest

from edge_c2i.errors import UserError
from edge_c2i.tasks import load_task, parse_bigbench, split


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
    ('{"prompt": "x", "answer": "c", "choices": ["a", "b"]}\n', r"t.jsonl:1: the answer 'c' is not"),
    ('{"prompt": "x"}\n', r"t.jsonl:1: 'prompt' and a non-empty 'answer'"),
    ('{"prompt": "x", "answer": "a", "choices": "ab"}\n', r"t.jsonl:1: 'choices' must be a list"),
    ("\n", r"has no examples"),
    ('{"prompt": "x", "answer": "a"}\n{"prompt": "y", "answer": "a", "choices": ["a", "b"]}\n',
     "mixes choice and open"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    f = tmp_path / "t.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_task(f"jsonl:{f}")


def test_bad_task_names():
    with pytest.raises(UserError, match="no such task file"):
        load_task("jsonl:/nonexistent/x.jsonl")
    with pytest.raises(UserError, match="unknown task"):
        load_task("squad")
    with pytest.raises(UserError, match="unknown BIG-bench task"):
        load_task("bigbench:no_such_task_here")


def test_a_task_split_in_subtasks_names_them():
    # fact_checker's own task.json has no examples; its subtasks have
    with pytest.raises(UserError, match="split in subtasks; pick one: ") as err:
        load_task("bigbench:fact_checker")
    named = str(err.value).split("pick one: ")[1].split(", ")
    assert "bigbench:fact_checker/fever" in named and "bigbench:fact_checker/" not in named


def test_malformed_bigbench_json():
    with pytest.raises(UserError, match="no 'examples' list"):
        parse_bigbench({"name": "x"}, "x/task.json")
    with pytest.raises(UserError, match="example 1: neither"):
        parse_bigbench({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}, "t.json")


def test_too_small_task_for_the_splits(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{i}", "answer": "a"}) + "\n" for i in range(50)))
    with pytest.raises(UserError, match="too few"):
        split(load_task(f"jsonl:{f}"))
