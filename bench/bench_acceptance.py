"""Acceptance rules for a search's pick, judged on the test split (offline, from search.json).

    python bench/bench_acceptance.py

A search keeps its best trial (accuracy, then loss, on the 100-example evaluation
sample) only if an acceptance rule says its gain is real; otherwise the model is
left alone.  So a rule's test outcome follows from the saved rows without running
anything: a pick it accepts scores the pick's test accuracy, a pick it rejects
scores the base's.  This script applies candidate rules to every pick of
bench/results/search.json (LASER's and C2I's, each grid of the wide run) and
counts the accepted picks that are worse than the base on the test split, the
real (test) gains each rule throws away and the losses it avoids.

What the rows hold: eval accuracy and loss of every pick, test accuracy of every
pick and of the base.  The base's eval accuracy and loss are saved only in the
rows measured last (``c2i_base_eval``); for SmolLM2 epistemic_reasoning they are
read from export.json (same split: 100 + 100 examples, seed 0; the dense model's
torch score), checked against the row.  For the other rows only a bound is known
(the base lost to every pick), so a rule may be undecided on them: the tables say
how many, and the mean gain is given as a range.  Per-example flips (wins and
losses of a pick against the base) are not in any saved row; the sign test,
edge_c2i.search's rule, needs them, so here it is judged by its floor: with no
losses it accepts a net gain of at least 5 of 100 examples at alpha 0.05, and
every loss raises the bar ("losses allowed" column).  Its acceptances below are
therefore an upper bound.  Searches run from now on save wins and losses per
trial, so the next bench run measures it exactly.

Writes bench/results/acceptance.json and prints the tables.
"""

from __future__ import annotations

import json

from common import RESULTS, table, write_result

from edge_c2i.verdict import min_net_wins, sign_test_p

ALPHA = 0.05
N_EVAL = 100  # the evaluation sample of every row of search.json


def losses_allowed(net: int, alpha: float = ALPHA) -> int | None:
    """Most losses with which a net gain of ``net`` still passes the sign test (None: none)."""
    if net < 1 or sign_test_p(net, 0) > alpha:
        return None
    c = 0
    while sign_test_p(net + c + 1, c + 1) <= alpha:
        c += 1
    return c


def net_at_least(k):
    def rule(p):
        if p["net_lo"] >= k:
            return True
        return False if p["net_hi"] is not None and p["net_hi"] < k else None
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


def bonferroni(p):
    return net_at_least(min_net_wins(ALPHA / p["trials"]))(p)


# name -> (rule, description); True accept, False reject, None undecided from the saved data
RULES = {
    "any margin (old rule)": (lambda p: True, "beats the base by any margin (every saved pick)"),
    "net >= 3": (net_at_least(3), "wins by 3+ examples of 100 (the sign test's floor at 0.125)"),
    "sign test 0.05 (chosen)": (net_at_least(min_net_wins(ALPHA)),
                                ("one-sided exact sign test at 0.05; its floor, net >= 5, shown: "
                                 "an upper bound on what it accepts")),
    "sign test 0.01": (net_at_least(min_net_wins(0.01)), "the same at 0.01: floor net >= 7"),
    "sign test 0.05 / trials": (bonferroni, ("Bonferroni over the grid's trials: floor net >= "
                                             "log2(trials / 0.05), 9 for 16 trials, 10 for 45")),
    "eval loss not worse": (loss_not_worse, "any accuracy gain, and eval loss <= the base's"),
    "net >= 5 and loss not worse": (both(net_at_least(5), loss_not_worse),
                                    "the sign test's floor and eval loss <= the base's"),
}


def base_eval(row: dict, export: dict | None) -> tuple[dict | None, str]:
    """The base's accuracy and loss on the row's evaluation sample, and where they come from."""
    if row.get("c2i_base_eval"):
        return row["c2i_base_eval"], "search.json"
    if export and (export["model"], export["task"], export["split"], export["n_examples"]) == (
            row["model"], row["task"], "eval", N_EVAL):
        dense = next(r for r in export["rows"] if r["variant"] == "dense")["accuracy_torch"]
        return {"accuracy": dense["accuracy"], "loss": dense["loss"]}, "export.json"
    return None, "bound"


def picks_of(row: dict, export: dict | None) -> list[dict]:
    """Every distinct pick of a row (LASER's, each C2I grid's), with what the rules need."""
    grids = [("LASER (subset)", row["laser_chosen"], row["laser_acc"], row["laser_subset_evals"])]
    grids += [(label, v["chosen"], v["acc"], v["evals"])
              for label, v in row["variants"].items() if v and v["chosen"]]
    base, source = base_eval(row, export)
    lowest = min((c["accuracy"], -c["loss"]) for _, c, _, _ in grids)  # the base lost to all
    if base is not None and (base["accuracy"], -base["loss"]) >= lowest:
        raise SystemExit(f"{row['model']} {row['task']}: base eval {base} from {source} does not "
                         "lose to every pick: not the row's evaluation sample")
    out: dict = {}
    for label, c, acc, trials in grids:
        key = f"{c['layer']}.{c['type']} rate {c['rate']} clusters {c['clusters']}"
        if key in out:  # the same pick from another grid: the most lenient trial count
            out[key]["grids"].append(label)
            out[key]["trials"] = min(out[key]["trials"], trials)
            continue
        if base is not None:
            net_lo = net_hi = round((c["accuracy"] - base["accuracy"]) * N_EVAL)
            dloss = c["loss"] - base["loss"]
        else:
            net_lo, net_hi, dloss = round((c["accuracy"] - lowest[0]) * N_EVAL), None, None
        gain = acc - row["base_acc"]
        out[key] = {"model": row["model"], "task": row["task"], "pick": key, "grids": [label],
                    "trials": trials, "base_eval_from": source, "eval_acc": c["accuracy"],
                    "net_lo": net_lo, "net_hi": net_hi, "dloss": dloss,
                    "losses_allowed": losses_allowed(net_lo) if net_hi is not None else None,
                    "test_gain": gain, "test_gain_examples": round(gain * row["n_test"]),
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


def main() -> None:
    search = json.loads((RESULTS / "search.json").read_text())
    export_path = RESULTS / "export.json"
    export = json.loads(export_path.read_text()) if export_path.exists() else None
    picks = [p for row in search["rows"] for p in picks_of(row, export)]
    shipped = [p for p in picks if {"LASER (subset)", "default"} & set(p["grids"])]
    for p in picks:
        p["decisions"] = {name: rule(p) for name, (rule, _) in RULES.items()}
    summary = {"shipped": summarize(shipped), "all grids": summarize(picks)}
    write_result("acceptance", {"source": "search.json", "alpha": ALPHA, "n_eval": N_EVAL,
                                "rules": {k: d for k, (_, d) in RULES.items()},
                                "summary": summary, "picks": picks})
    print(f"Picks of LASER (subset) and C2I's default grid, {len(shipped)} on "
          f"{len(search['rows'])} model x task pairs:\n")
    print(table(fmt_summary(summary["shipped"]), SUMMARY_COLUMNS))
    print(f"\nEvery distinct pick of any grid of the wide run and of LASER, {len(picks)}:\n")
    print(table(fmt_summary(summary["all grids"]), SUMMARY_COLUMNS))
    detail = [{**p, "grid": ", ".join(p["grids"]),
               "net": str(p["net_lo"]) if p["net_hi"] is not None else f">= {p['net_lo']}",
               "test": f"{p['test_gain_examples']:+d} / {p['n_test']}",
               "chosen": {True: "accept", False: "reject", None: "?"}[
                   p["decisions"]["sign test 0.05 (chosen)"]]} for p in shipped]
    print("\nThe shipped picks (net: eval examples won minus lost against the base; losses "
          "allowed: the most the sign test tolerates at that net):\n")
    print(table(detail, [("model", "model"), ("task", "task"), ("grid", "grid"), ("pick", "pick"),
                         ("base_eval_from", "base eval from"), ("net", "net of 100"),
                         ("dloss", "eval loss change"), ("losses_allowed", "losses allowed"),
                         ("test", "test gain, examples"), ("chosen", "sign test 0.05")]))


if __name__ == "__main__":
    main()
