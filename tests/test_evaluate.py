import json
import time

import pytest
import torch
from conftest import TINY, tiny_model

from edge_c2i.errors import EdgeC2IError
from edge_c2i.evaluate import (
    Result,
    Scorer,
    calibrated_accuracy,
    calibration_control,
    check_lengths,
    context_length,
    encode,
    evaluate,
)
from edge_c2i.targets import decoder_layers
from edge_c2i.tasks import Example, load_task, split

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow",
    "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Poland": "Warsaw",
    "Hungary": "Budapest", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "Thailand": "Bangkok", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Kenya": "Nairobi", "South Korea": "Seoul", "Cuba": "Havana",
    "Iran": "Tehran", "Iraq": "Baghdad", "the Czech Republic": "Prague",
    "the United Kingdom": "London",
}


@pytest.fixture(scope="module")
def epistemic():
    return split(load_task("bundled:continents"), n_calib=20, n_eval=20)


def flat(rows):
    return [x for row in rows for x in row]


def one_at_a_time(model, tok, ex):
    """Reference: one unpadded sequence per (example, answer), full logits."""
    out = []
    for a in ex.choices or (ex.answer,):
        ctx, ans = encode(tok, ex.prompt, a)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ctx + ans])).logits[0], -1)
        out.append(sum(lp[len(ctx) + t - 1, tok_id].item() for t, tok_id in enumerate(ans)))
    return out


def test_batched_scores_equal_one_at_a_time_on_the_real_model(smol, epistemic):
    model, tok = smol
    examples = epistemic.eval[:8]
    res = Scorer(tok, examples, max_batch_tokens=512).run(model)
    for ex, got in zip(examples, res.choice_logprobs):
        assert got == pytest.approx(one_at_a_time(model, tok, ex), abs=2e-4)
    assert 0 <= res.accuracy <= 1 and res.loss > 0
    # the answer lengths the length-bias control needs, in example order
    assert res.answer_tokens == [[len(encode(tok, ex.prompt, c)[1]) for c in ex.choices]
                                 for ex in examples]


def test_open_answer_scores_on_the_real_model(smol):
    model, tok = smol
    ex = [Example("The capital of France is ", "Paris"), Example("One, two, three, four, ", "five")]
    res = Scorer(tok, ex).run(model)
    assert res.first_token_correct == [True, True]
    ref = [one_at_a_time(model, tok, e)[0] / len(encode(tok, e.prompt, e.answer)[1]) for e in ex]
    assert res.loss == pytest.approx(-sum(ref) / 2, abs=1e-4)


def test_leading_space_goes_into_the_answer(smol):
    _, tok = smol
    ctx, ans = encode(tok, "The capital of France is ", "Paris")
    assert tok.decode(ans) == " Paris" and not tok.decode(ctx).endswith(" ")


def test_cached_prefix_gives_the_same_scores_as_a_full_run(smol, epistemic):
    model, tok = smol
    scorer = Scorer(tok, epistemic.eval[:6])
    full = scorer.run(model)
    scorer.cache_inputs(model, [25])
    part = scorer.run(model, start_layer=25)
    assert flat(part.choice_logprobs) == pytest.approx(flat(full.choice_logprobs), abs=1e-4)


def test_caches_taken_in_depth_order_and_on_the_base_run(smol, epistemic, monkeypatch):
    model, tok = smol
    scorer = Scorer(tok, epistemic.eval[:6])
    base = scorer.run(model, keep=[3])  # the base evaluation caches block 3's inputs
    assert base.accuracy == scorer.run(model).accuracy
    blocks = decoder_layers(model)
    ran = []
    for i in (5, 20, 29):
        monkeypatch.setattr(blocks[i], "forward", _recording(blocks[i].forward, ran, i))
    scorer.cache_inputs(model, [12, 20], start_layer=3)  # blocks 3..19 only, from block 3's
    assert 5 in ran and 20 not in ran and 29 not in ran  # stopped at the deepest one
    scorer.drop_cache(keep=[20])
    part = scorer.run(model, start_layer=20)
    assert flat(part.choice_logprobs) == pytest.approx(flat(base.choice_logprobs), abs=1e-4)
    with pytest.raises(KeyError):
        scorer.run(model, start_layer=12)  # dropped


def _recording(forward, ran, i):
    def wrapped(*args, **kwargs):
        ran.append(i)
        return forward(*args, **kwargs)
    return wrapped


def test_results_of_two_samples_add_up(smol, epistemic):
    model, tok = smol
    a, b = epistemic.eval[:4], epistemic.eval[4:10]
    both = Scorer(tok, a).run(model) + Scorer(tok, b).run(model)
    whole = Scorer(tok, a + b).run(model)
    assert both.n == 10 and both.gold == whole.gold
    assert both.accuracy == whole.accuracy and both.loss == pytest.approx(whole.loss, rel=1e-5)


class Tok:  # a byte-level stand-in tokenizer for the random models: one token a character
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + (ord(c) % 90) for c in text]}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_cached_prefix_on_every_architecture(arch):
    model = tiny_model(arch)
    examples = [Example(f"question {i}: ", "yes", ("yes", "no way")) for i in range(4)]
    scorer = Scorer(Tok(), examples)
    full = scorer.run(model)
    scorer.cache_inputs(model, [1])
    part = scorer.run(model, start_layer=1)
    assert flat(part.choice_logprobs) == pytest.approx(flat(full.choice_logprobs), abs=1e-4)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_packed_scores_equal_one_at_a_time_on_every_architecture(arch):
    """Answers packed after their prompt (a 4D mask, positions restarting) and prompts of
    different lengths padded into one batch score as each answer alone."""
    model = tiny_model(arch)
    examples = [Example("q" * (3 + 2 * i) + ": ", "yes", ("yes", "no way", "maybe so"))
                for i in range(3)]
    res = Scorer(Tok(), examples).run(model)
    for ex, got in zip(examples, res.choice_logprobs, strict=True):
        assert got == pytest.approx(one_at_a_time(model, Tok(), ex), abs=1e-4)


def test_alibi_models_are_found_by_their_outputs_and_the_probe_runs_no_hook(smol):
    """Bloom and MPT place tokens by index (ALiBi): their answers get rows of their own;
    the packaged SmolLM2 (rotary) keeps its packed answers."""
    from edge_c2i.evaluate import follows_position_ids

    assert follows_position_ids(smol[0])
    found = {a: follows_position_ids(tiny_model(a)) for a in ("llama", "opt", "bloom", "mpt")}
    assert found == {"llama": True, "opt": True, "bloom": False, "mpt": False}
    model = tiny_model("bloom")
    calls = []
    model.transformer.h[0].register_forward_hook(lambda *a: calls.append(1))
    assert not follows_position_ids(model) and calls == []
    model(torch.tensor([[1, 2]]))
    assert calls == [1]  # still registered


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # Gemma-3: softcapped logits
def test_the_lm_head_in_chunks_gives_the_gradients_of_one_chunk(arch):
    """Chunks of answer positions (their logits recomputed in backward) and one chunk (kept):
    the same loss and gradients."""
    model = tiny_model(arch)
    if arch == "gemma3_text":
        model.config.final_logit_softcapping = 5.0
    weight = decoder_layers(model)[0].mlp.down_proj.weight.requires_grad_(True)
    examples = [Example(f"question {i}: ", "yes", ("yes", "no way")) for i in range(6)]
    grads, losses = [], []
    for chunk in (2, 1024):
        weight.grad = None
        losses.append(Scorer(Tok(), examples, lm_head_chunk=chunk, gold_only=True)
                      .loss_and_backward(model))
        grads.append(weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8) and grads[0].abs().sum() > 0


def test_calibration_control_fits_a_bias_that_flips_a_biased_model():
    # the model always prefers choice 0 by a margin of 1, but gold is choice 1 when margin < 1.5
    def res(margins, gold):
        return Result(0, 0, [[0.0, -m] for m in margins], gold, None, len(gold))

    labels = ("true", "false")
    evals = [Example("p", labels[g], labels) for g in [1, 1, 0, 0]]
    tests = [Example("p", labels[g], labels) for g in [1, 0]]
    ev = res([1.0, 1.2, 2.0, 2.5], [1, 1, 0, 0])
    te = res([1.1, 2.2], [1, 0])
    assert calibrated_accuracy(ev, te, evals, tests) == 1.0
    assert calibration_control(evals + tests) == "label bias"


def test_calibration_control_fits_a_length_bias_when_choices_differ_per_question():
    # each token costs about 1 nat, so summed log-probs favour the shortest answer;
    # gold is the longest: only a bias per answer token recovers it
    def res(n_examples, gold_len):
        lens = [[2, 5, gold_len]] * n_examples
        lps = [[-1.0 * n - 0.01 * k for n in row] for k, row in enumerate(lens)]
        return Result(0, 0, lps, [2] * n_examples, None, n_examples, lens)

    examples = [Example(f"q{i}", f"c{i}", (f"a{i}", f"b{i}", f"c{i}")) for i in range(6)]
    assert calibration_control(examples) == "length bias"
    ev, te = res(4, 9), res(2, 7)
    assert max(range(3), key=te.choice_logprobs[0].__getitem__) == 0  # unbiased: wrong
    assert calibrated_accuracy(ev, te, examples[:4], examples[4:]) == 1.0
    # without the answer lengths (results saved by an older version) there is no control
    old = Result(0, 0, ev.choice_logprobs, ev.gold, None, 4)
    assert calibrated_accuracy(old, te, examples[:4], examples[4:]) is None
    assert calibration_control([Example("p", "a")]) is None  # open answers


def test_natural_jsonl_answers_get_a_space_and_score_sensibly(smol, tmp_path):
    model, tok = smol
    f = tmp_path / "capitals.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"The capital of {c} is", "answer": a}) + "\n"
                         for c, a in CAPITALS.items()))
    with_space = evaluate(model, tok, load_task(f"jsonl:{f}").examples)["accuracy"]
    glued = evaluate(model, tok, load_task(f"jsonl:{f}", target_delimiter="").examples)["accuracy"]
    assert with_space >= 0.5 and glued <= 0.1  # measured: 0.733 and 0.0


def test_a_prompt_longer_than_the_context_is_refused_before_scoring(smol):
    model, tok = smol
    limit = context_length(model)
    assert limit == 8192
    ok = Example("The capital of France is ", "Paris", source="t.jsonl:1")
    long = Example("word " * 9000, "Paris", source="t.jsonl:2")
    with pytest.raises(EdgeC2IError, match=r"t.jsonl:2: prompt and answer are 9,0\d\d tokens, more "
                                        r"than the model's context of 8192; shorten the prompt"):
        check_lengths(tok, [ok, long], limit)
    with pytest.raises(EdgeC2IError, match="t.jsonl:2: prompt and answer are 9,0"):
        evaluate(model, tok, [ok, long])


def test_a_huge_prompt_is_refused_without_tokenizing_it():
    class NoTok(Tok):
        def __call__(self, text, add_special_tokens=True):
            raise AssertionError("tokenized")

    huge = Example("x" * 10_000_000, "y")
    t0 = time.perf_counter()
    with pytest.raises(EdgeC2IError, match="example 1: prompt and answer are 10,000,001 characters"):
        check_lengths(NoTok(), [Example("a", "b"), huge], 8192)
    with pytest.raises(EdgeC2IError, match="10,000,001 characters, far more than the model's context"):
        Scorer(NoTok(), [huge], max_positions=8192)
    assert time.perf_counter() - t0 < 1


def test_a_run_checks_the_models_context_before_building_a_batch():
    model = tiny_model("gpt2")  # 128 positions
    scorer = Scorer(Tok(), [Example("q" * 100, "yes", ("yes", "no")),
                            Example("q" * 200, "yes", ("yes", "no"))])
    with pytest.raises(EdgeC2IError, match=r"example 1: prompt and answer are 203 tokens, more than "
                                        r"the model's context of 128"):
        scorer.run(model)
    with pytest.raises(EdgeC2IError, match="example 1"):
        scorer.loss_and_backward(model)
    assert scorer._batches is None  # no attention mask was ever allocated
    limited = Tok()
    limited.model_max_length = 128  # a tokenizer that knows its model's context: refused at once
    with pytest.raises(EdgeC2IError, match="example 0: prompt and answer are 203 tokens"):
        Scorer(limited, [Example("q" * 200, "yes", ("yes", "no"))])
    limited.model_max_length = int(1e30)  # transformers' "unset": no limit from it
    assert Scorer(limited, [Example("q" * 200, "yes", ("yes", "no"))]).positions == [203]
    with pytest.raises(EdgeC2IError, match="no examples to score"):
        Scorer(Tok(), [])
