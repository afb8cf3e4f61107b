"""Acceptance rules for a search's pick, judged on the test split.

    python bench/bench_acceptance.py                  # the tables (search_grid.json + the measurements)
    OMP_NUM_THREADS=1 python bench/bench_acceptance.py --measure --threads 1   # measure, then the tables

A search keeps its best trial (accuracy, then loss, on the 100-example evaluation
sample) only if an acceptance rule says its gain is real; otherwise the model is
left alone.  So a rule's test outcome follows from the rows of
bench/results/search_grid.json: a pick it accepts scores the pick's test accuracy, a
pick it rejects scores the base's.  This script applies candidate rules to every
pick of search_grid.json (LASER's and C2I's, each grid of the wide run) and counts the
accepted picks that are worse than the base on the test split, the real (test)
gains each rule throws away and the losses it avoids.

What the rules need and the rows lack: the per-example flips of a pick against the
unmodified model on the evaluation sample (wins: examples it gets right that the
base gets wrong; losses: the reverse), which the sign test (edge_c2i.search's rule)
is computed from, and in the older rows the base's own evaluation score.
``--measure`` measures them: for each model x task pair of search_grid.json it rebuilds
the evaluation sample the search used (edge_c2i.tasks.split, protocol "c2i", 100
calibration + 100 evaluation examples, seed 0, search_grid.json's test size: the split
bench_search.py gives both LASER and C2I; LASER's subset was scored on that same
evaluation sample, not on LASER's own validation split), scores the base and every
distinct pick on it (the reduced matrix swapped in, the blocks from it upward run
from cached inputs, as the search did; the original restored) and counts wins and
losses (edge_c2i.verdict.paired_counts).  The rebuild is checked before it is used:
the base's evaluation accuracy must equal the row's where the row saved it
(``c2i_base_eval``; for SmolLM2 epistemic_reasoning export.json's dense score), every
pick's must equal the accuracy the search recorded for it, and wins - losses must be
the recorded accuracy difference.  A pair that fails the check is reported and not
used.  Each pair's measurement is saved to bench/results/acceptance.json as soon as it
ends (``measured``), so a cut-off run keeps what it measured and the next --measure
goes on with the pairs left (--redo measures again).

Without a measurement a pick is judged from the saved rows only: the net gain is
known where the base's evaluation score is (otherwise only a lower bound: the base
lost to every pick) and the sign test only by its floor (with no losses, a net gain
of at least 5 of 100 examples at alpha 0.05), so a rule may be undecided on it; the
tables then say how many, and the mean gain is given as a range.

Writes bench/results/acceptance.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, table, write_result

from edge_c2i.verdict import min_net_wins, sign_test_p

ALPHA = 0.05
N_EVAL = 100  # the evaluation sample of every row of search_grid.json
# bench_search.py's split (its run_pair); the test size is search_grid.json's test_samples
SPLIT = {"protocol": "c2i", "n_calib": 100, "n_eval": 100, "seed": 0}
LAST_TASKS = ("bigbench:truthful_qa",)  # the costliest evaluations: measured last


def pick_key(c: dict) -> str:
    return f"{c['layer']}.{c['type']} rate {c['rate']} clusters {c['clusters']}"


def pair_key(row: dict) -> str:
    return f"{row['model']} {row['task']}"


def grids_of(row: dict) -> list[tuple[str, dict, float, int]]:
    """(grid, pick, pick's test accuracy, trials of the grid) of LASER and each C2I grid."""
    grids = [("LASER (subset)", row["laser_chosen"], row["laser_acc"], row["laser_subset_evals"])]
    return grids + [(label, v["chosen"], v["acc"], v["evals"])
                    for label, v in row["variants"].items() if v and v["chosen"]]


# --------------------------------------------------------------------------- rules


def net_at_least(k):
    def rule(p):
        if p["net_lo"] >= k:
            return True
        return False if p["net_hi"] is not None and p["net_hi"] < k else None
    return rule


def sign_test(alpha_of):
    """One-sided exact sign test at ``alpha_of(pick)`` on the pick's wins and losses.

    Without measured flips only its floor is known: a net below it is rejected, any
    other net is undecided (the losses decide)."""
    def rule(p):
        alpha = alpha_of(p)
        if p["wins"] is not None:
            return p["wins"] > p["losses"] and sign_test_p(p["wins"], p["losses"]) <= alpha
        if p["net_hi"] is not None and p["net_hi"] < min_net_wins(alpha):
            return False
        return None
    return rule


def loss_not_worse(p):
    return None if p["dloss"] is None else p["dloss"] <= 0


def both(a, b):
    def rule(p):
        x, y = a(p), b(p)
        if x is False or y is False:
            return False
        return None if x is None or y is None else True
    return rule


# name -> (rule, description); True accept, False reject, None undecided from the data
RULES = {
    "any margin (old rule)": (lambda p: True, "beats the base by any margin (every saved pick)"),
    "net >= 3": (net_at_least(3), "wins by 3+ examples of 100, net"),
    "net >= 5 (chosen)": (net_at_least(5), ("wins by 5+ examples of 100, net: the sign test's "
                                            "floor at 0.05, whatever the losses")),
    "sign test 0.05": (sign_test(lambda p: ALPHA),
                                ("one-sided exact sign test on the pick's wins and losses, at 0.05: "
                                 "net >= 5 with no losses, more when answers flip both ways")),
    "sign test 0.01": (sign_test(lambda p: 0.01), "the same at 0.01 (floor: net >= 7)"),
    "sign test 0.05 / trials": (sign_test(lambda p: ALPHA / p["trials"]),
                                ("Bonferroni over the grid's trials (floor: net >= 9 for 16 "
                                 "trials, 10 for 45)")),
    "eval loss not worse": (loss_not_worse, "any accuracy gain, and eval loss <= the base's"),
    "sign test 0.05 and loss not worse": (both(sign_test(lambda p: ALPHA), loss_not_worse),
                                          "the sign test at 0.05 and eval loss <= the base's"),
}
CHOSEN = "net >= 5 (chosen)"


# --------------------------------------------------------------------------- measuring


def measure_pair(model, tok, row: dict, test_samples: int) -> dict:
    """The base and every distinct pick of ``row`` on the evaluation sample its search used."""
    from edge_c2i.evaluate import Scorer
    from edge_c2i.factorize import reduce, swap
    from edge_c2i.targets import get_target
    from edge_c2i.tasks import load_task, split
    from edge_c2i.verdict import paired_counts

    t0 = time.perf_counter()
    splits = split(load_task(row["task"]), SPLIT["n_calib"], SPLIT["n_eval"], test_samples,
                   SPLIT["seed"], SPLIT["protocol"])
    scorer = Scorer(tok, splits.eval)
    base = scorer.run(model)
    picks: dict[str, dict] = {}
    for _, c, _, _ in grids_of(row):
        picks.setdefault(pick_key(c), c)
    out = {}
    for layer in sorted({c["layer"] for c in picks.values()}):
        scorer.cache_inputs(model, [layer])
        for key, c in picks.items():
            if c["layer"] != layer:
                continue
            target = get_target(model, c["layer"], c["type"])
            original = model.get_submodule(target.name)
            t1 = time.perf_counter()
            reduce(model, target, c["rate"], c["clusters"])
            try:
                res = scorer.run(model, start_layer=layer)
            finally:
                swap(model, target.name, original)
            wins, losses = paired_counts(base, res)
            out[key] = {"accuracy": res.accuracy, "loss": res.loss, "wins": wins,
                        "losses": losses, "p": sign_test_p(wins, losses),
                        "recorded_accuracy": c["accuracy"], "recorded_loss": c["loss"],
                        "seconds": time.perf_counter() - t1}
        scorer.drop_cache()
    return {"model": row["model"], "task": row["task"],
            "split": {**SPLIT, "n_test": test_samples, "sizes": splits.sizes},
            "base": {"accuracy": base.accuracy, "loss": base.loss, "n": base.n},
            "picks": out, "seconds": time.perf_counter() - t0}


def check(m: dict, row: dict, export: dict | None) -> dict:
    """Whether a measurement rebuilt the row's evaluation sample (see the module doc)."""
    problems = []
    recorded, source = saved_base_eval(row, export)
    if m["split"]["sizes"]["eval"] != N_EVAL or m["split"]["sizes"]["test"] != row["n_test"]:
        problems.append(f"split sizes {m['split']['sizes']} are not 100 eval + "
                        f"{row['n_test']} test")
    if recorded is not None and abs(m["base"]["accuracy"] - recorded["accuracy"]) > 1e-9:
        problems.append(f"base eval accuracy {m['base']['accuracy']} != {recorded['accuracy']} "
                        f"({source})")
    for key, p in m["picks"].items():
        if abs(p["accuracy"] - p["recorded_accuracy"]) > 1e-9:
            problems.append(f"{key}: eval accuracy {p['accuracy']} != recorded "
                            f"{p['recorded_accuracy']}")
        if p["wins"] - p["losses"] != round((p["accuracy"] - m["base"]["accuracy"]) * N_EVAL):
            problems.append(f"{key}: wins - losses != the accuracy difference")
    loss_diffs = [abs(p["loss"] - p["recorded_loss"]) for p in m["picks"].values()]
    if recorded is not None:
        loss_diffs.append(abs(m["base"]["loss"] - recorded["loss"]))
    return {"ok": not problems, "problems": problems, "base_recorded_in": source,
            "base_recorded": recorded, "picks_matched": sum(
                abs(p["accuracy"] - p["recorded_accuracy"]) <= 1e-9 for p in m["picks"].values()),
            "picks": len(m["picks"]), "max_loss_diff": max(loss_diffs)}


# --------------------------------------------------------------------------- the tables


def saved_base_eval(row: dict, export: dict | None) -> tuple[dict | None, str]:
    """The base's accuracy and loss on the row's evaluation sample as saved, and where."""
    if row.get("c2i_base_eval"):
        return row["c2i_base_eval"], "search_grid.json"
    if export and (export["model"], export["task"], export["split"], export["n_examples"]) == (
            row["model"], row["task"], "eval", N_EVAL):
        dense = next(r for r in export["rows"] if r["variant"] == "dense")["accuracy_torch"]
        return {"accuracy": dense["accuracy"], "loss": dense["loss"]}, "export.json"
    return None, "bound"


def picks_of(row: dict, export: dict | None, measured: dict | None) -> list[dict]:
    """Every distinct pick of a row (LASER's, each C2I grid's), with what the rules need.

    ``measured``: the pair's measurement, if it passed ``check``."""
    grids = grids_of(row)
    if measured:
        base, source = measured["base"], "measured"
    else:
        base, source = saved_base_eval(row, export)
    lowest = min((c["accuracy"], -c["loss"]) for _, c, _, _ in grids)  # the base lost to all
    if not measured and base is not None and (base["accuracy"], -base["loss"]) >= lowest:
        raise SystemExit(f"{pair_key(row)}: base eval {base} from {source} does not lose to "
                         "every pick: not the row's evaluation sample")
    out: dict = {}
    for label, c, acc, trials in grids:
        key = pick_key(c)
        if key in out:  # the same pick from another grid: the most lenient trial count
            out[key]["grids"].append(label)
            out[key]["trials"] = min(out[key]["trials"], trials)
            continue
        m = measured["picks"][key] if measured else None
        wins, losses, p = (m["wins"], m["losses"], m["p"]) if m else (None, None, None)
        if m:
            net_lo = net_hi = wins - losses
            dloss = m["loss"] - base["loss"]
        elif base is not None:
            net_lo = net_hi = round((c["accuracy"] - base["accuracy"]) * N_EVAL)
            dloss = c["loss"] - base["loss"]
        else:
            net_lo, net_hi, dloss = round((c["accuracy"] - lowest[0]) * N_EVAL), None, None
        gain = acc - row["base_acc"]
        calibrated = row.get("calibrated_acc")  # choice tasks: the bias-only control
        out[key] = {"model": row["model"], "task": row["task"], "pick": key, "grids": [label],
                    "trials": trials, "base_eval_from": source, "eval_acc": c["accuracy"],
                    "wins": wins, "losses": losses, "p": p,
                    "net_lo": net_lo, "net_hi": net_hi, "dloss": dloss,
                    "test_gain": gain, "test_gain_examples": round(gain * row["n_test"]),
                    "over_calibrated_examples": None if calibrated is None else
                    round((acc - calibrated) * row["n_test"]),
                    "n_test": row["n_test"]}
    return list(out.values())


def summarize(picks: list[dict]) -> list[dict]:
    """Per rule: what it accepts, the worse-on-test picks it keeps, the gains it throws away."""
    rows = []
    for name, (rule, _) in RULES.items():
        said = [(rule(p), p["test_gain"]) for p in picks]
        kept = sum(g for d, g in said if d)
        open_ = [g for d, g in said if d is None]
        lo, hi = kept + sum(min(g, 0) for g in open_), kept + sum(max(g, 0) for g in open_)
        n = len(picks)
        rows.append({
            "rule": name, "picks": n,
            "accepted": sum(d is True for d, _ in said), "undecided": len(open_),
            "worse_accepted": sum(d is True and g < 0 for d, g in said),
            "worse_undecided": sum(d is None and g < 0 for d, g in said),
            "gains_rejected": sum(d is False and g > 0 for d, g in said),
            "gain_rejected_pts": 100 * sum(g for d, g in said if d is False and g > 0),
            "losses_avoided": sum(d is False and g < 0 for d, g in said),
            "loss_avoided_pts": -100 * sum(g for d, g in said if d is False and g < 0),
            "mean_gain_pts": 100 * kept / n if not open_ else None,
            "mean_gain_range_pts": [100 * lo / n, 100 * hi / n]})
    return rows


def fmt_summary(rows: list[dict]) -> list[dict]:
    def pts(lo, hi):
        return f"{lo:+.2f}" if abs(hi - lo) < 1e-9 else f"{lo:+.2f} to {hi:+.2f}"
    return [{**r, "acc": f"{r['accepted']} (+{r['undecided']} undecided)" if r["undecided"]
             else str(r["accepted"]),
             "worse": f"{r['worse_accepted']}" + (f" (+{r['worse_undecided']} undecided)"
                                                  if r["worse_undecided"] else ""),
             "lost": f"{r['gains_rejected']} ({r['gain_rejected_pts']:.1f} pts)",
             "avoided": f"{r['losses_avoided']} ({r['loss_avoided_pts']:.1f} pts)",
             "mean": pts(*r["mean_gain_range_pts"])} for r in rows]


SUMMARY_COLUMNS = [("rule", "rule"), ("picks", "picks"), ("acc", "accepted"),
                   ("worse", "accepted and worse on test"),
                   ("lost", "test gains rejected"), ("avoided", "test losses avoided"),
                   ("mean", "mean test gain per pick, pts")]


def load_json(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def build(search: dict, export: dict | None, measured: dict) -> dict:
    """acceptance.json: the measurements, their checks, every pick's decisions, the summary."""
    checks = {}
    picks = []
    for row in search["rows"]:
        m = measured.get(pair_key(row))
        if m:
            checks[pair_key(row)] = check(m, row, export)
        ok = m if m and checks[pair_key(row)]["ok"] else None
        picks += picks_of(row, export, ok)
    shipped = [p for p in picks if {"LASER (subset)", "default"} & set(p["grids"])]
    for p in picks:
        p["decisions"] = {name: rule(p) for name, (rule, _) in RULES.items()}
    return {"source": "search_grid.json", "alpha": ALPHA, "n_eval": N_EVAL, "split": SPLIT,
            "rules": {k: d for k, (_, d) in RULES.items()},
            "summary": {"shipped": summarize(shipped), "all grids": summarize(picks)},
            "checks": checks, "picks": picks, "measured": measured}


def report(search: dict, data: dict) -> None:
    checks, picks = data["checks"], data["picks"]
    rows = search["rows"]
    used = [k for k, c in checks.items() if c["ok"]]
    print(f"Measured: {len(used)} of {len(rows)} model x task pairs (wins and losses of every "
          "pick on the evaluation sample)" + (f"; not measured: "
          f"{', '.join(pair_key(r) for r in rows if pair_key(r) not in checks)}"
          if len(checks) < len(rows) else "") + ".\n")
    if checks:
        print("Check of each measurement (the rebuilt evaluation sample against what the "
              "search recorded):\n")
        print(table([{"pair": k, **c, "base": f"{data['measured'][k]['base']['accuracy']:.2f}",
                      "recorded": ("" if c["base_recorded"] is None else
                                   f"{c['base_recorded']['accuracy']:.2f} ({c['base_recorded_in']})"),
                      "matched": f"{c['picks_matched']} / {c['picks']}",
                      "ok": "yes" if c["ok"] else "NO: " + "; ".join(c["problems"]),
                      "s": data["measured"][k]["seconds"]} for k, c in checks.items()],
                    [("pair", "pair"), ("base", "base eval acc, rebuilt"),
                     ("recorded", "base eval acc, recorded"),
                     ("matched", "picks whose eval acc matches"),
                     ("max_loss_diff", "largest eval loss difference"),
                     ("ok", "used"), ("s", "seconds")]))
        print()
    print("The rules:\n")
    print(table([{"rule": k, "what": d} for k, d in data["rules"].items()],
                [("rule", "rule"), ("what", "accepts a pick that")]))
    print()
    n_shipped = data["summary"]["shipped"][0]["picks"]
    print(f"Picks of LASER (subset) and C2I's default grid, {n_shipped} on "
          f"{len(rows)} model x task pairs:\n")
    print(table(fmt_summary(data["summary"]["shipped"]), SUMMARY_COLUMNS))
    print(f"\nEvery distinct pick of any grid of the wide run and of LASER, {len(picks)}:\n")
    print(table(fmt_summary(data["summary"]["all grids"]), SUMMARY_COLUMNS))

    def detail(p):
        return {**p, "grid": ", ".join(p["grids"]),
                "net": str(p["net_lo"]) if p["net_hi"] is not None else f">= {p['net_lo']}",
                "wl": "" if p["wins"] is None else f"{p['wins']} / {p['losses']}",
                "test": f"{p['test_gain_examples']:+d} / {p['n_test']}",
                "cal": "" if p["over_calibrated_examples"] is None
                else f"{p['over_calibrated_examples']:+d}",
                "chosen": {True: "accept", False: "reject", None: "?"}[p["decisions"][CHOSEN]]}
    print("\nEvery pick (net: evaluation examples won minus lost against the base; p: the "
          "one-sided exact sign test; over the calibrated base: test examples above the "
          "unmodified model with a bias fitted on the evaluation sample, choice tasks):\n")
    print(table([detail(p) for p in picks],
                [("model", "model"), ("task", "task"), ("grid", "grid"), ("pick", "pick"),
                 ("base_eval_from", "base eval from"), ("wl", "wins / losses"),
                 ("net", "net of 100"), ("p", "p"), ("dloss", "eval loss change"),
                 ("test", "test gain, examples"), ("cal", "over the calibrated base"),
                 ("chosen", "net >= 5")]))


def measure(args, search: dict, export: dict | None, measured: dict) -> None:
    import torch

    from edge_c2i.models import load_model

    torch.set_num_threads(args.threads)
    todo = [r for r in search["rows"] if r["model"] in args.models and r["task"] in args.tasks
            and (args.redo or pair_key(r) not in measured)]
    todo.sort(key=lambda r: (r["task"] in LAST_TASKS, args.models.index(r["model"])))
    loaded, model, tok = None, None, None
    for row in todo:
        if loaded != row["model"]:
            model = tok = None
            model, tok = load_model(row["model"])
            loaded = row["model"]
        m = measure_pair(model, tok, row, search["test_samples"])
        m["threads"] = args.threads
        measured[pair_key(row)] = m
        data = build(search, export, measured)
        write_result("acceptance", data)  # after every pair: a cut-off run keeps what it measured
        c = data["checks"][pair_key(row)]
        print(f"{pair_key(row)}: base eval {m['base']['accuracy']:.2f} "
              f"(recorded: {c['base_recorded'] and c['base_recorded']['accuracy']}), "
              f"{c['picks_matched']}/{c['picks']} picks match, "
              + ", ".join(f"{k}: {p['wins']}/{p['losses']} p {p['p']:.3g}"
                          for k, p in m["picks"].items())
              + f"; {'ok' if c['ok'] else 'CHECK FAILED: ' + '; '.join(c['problems'])}"
              f" ({m['seconds']:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true",
                    help="measure wins and losses of the pairs not measured yet (needs the models)")
    ap.add_argument("--redo", action="store_true", help="with --measure: measure again")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--tasks", nargs="+", default=None, help="default: every task of search_grid.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    search = load_json("search_grid")  # the wide run the acceptance rule was chosen on
    export = load_json("export")
    measured = (load_json("acceptance") or {}).get("measured", {})
    if args.measure:
        args.tasks = args.tasks or sorted({r["task"] for r in search["rows"]})
        measure(args, search, export, measured)
    data = build(search, export, measured)
    write_result("acceptance", data)
    report(search, data)


if __name__ == "__main__":
    main()
