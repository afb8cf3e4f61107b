"""Plot bench/results/compress.json: test loss and accuracy against the size kept.

    pip install matplotlib
    python bench/plot_compress.py      # writes bench/results/compress.png

One column per (model, task), one line per truncation method, the x axis the share of
the linear layers' parameters kept; the unmodified model is the dashed line and
keep-accuracy mode's pick the star.  The file sizes of the exports (fp32, int8, int4) are
in compress.json's ``export`` rows and the README table, not on this plot.
"""

from __future__ import annotations

import json

from common import RESULTS

METHODS = ("svd", "whitened_svd", "gradient_svd", "edge_c2i")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RESULTS / "compress.json").read_text())["rows"]
    pairs = list(dict.fromkeys((r["model"], r["task"]) for r in rows))
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.2 * len(pairs), 6), squeeze=False)
    for col, (model, task) in enumerate(pairs):
        mine = [r for r in rows if (r["model"], r["task"]) == (model, task)]
        base = mine[0]
        for row, (key, label) in enumerate((("loss", "test loss"), ("accuracy", "test accuracy"))):
            ax = axes[row][col]
            for method in METHODS:
                pts = sorted((r["kept"], r[key]) for r in mine if r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=method)
            ax.axhline(base[f"base_{key}"], color="gray", linestyle="--", label="unmodified")
            keep = [r for r in mine if r["method"] == "edge_c2i_keep"]
            if keep:
                ax.plot(keep[0]["kept"], keep[0][key], marker="*", markersize=14, color="black",
                        linestyle="none", label="keep-accuracy mode")
            if key == "loss":
                ax.set_ylim(top=max(base["base_loss"] * 2, base["base_loss"] + 2))
                ax.set_title(f"{model}\n{task.split(':', 1)[1]}", fontsize=9)
            ax.set_xlabel("linear parameters kept")
            ax.set_ylabel(label)
            ax.invert_xaxis()
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS / "compress.png"
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
