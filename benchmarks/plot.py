"""
Bar chart of the ratio table of a benchmarks/run.py JSON file (ratios > 1:
dispycos is better). Needs matplotlib; run.py calls it with whichever
interpreter (this repository's venv or the anchors venv) has it.

    python benchmarks/plot.py results.json ratios.png
"""

import json
import sys


def plot_rows(results):
    """(key, label) of the rows to plot: each workload's value and its detail fields (MEM USS ...) that have ratios."""
    rows = results.get("rows") or [{"key": w, "workload": w, "field": "value",
                                    "metric": results["workload_info"][w]["metric"]} for w in results["workloads"]]
    return [(r["key"], "%s\n%s" % (r["workload"], r["metric"])) for r in rows if results["ratios"].get(r["key"])]


def target_lines(results, key):
    """(anchor, threshold) of the targets that are a ratio of row C{key} to the same row of an anchor."""
    workload, _, field = key.partition(".")
    targets = results["targets"].get(workload) or []
    if isinstance(targets, dict):  # a first-edition results file: one ratio-vs-pycos target
        return [("pycos", targets["threshold"])] if targets.get("kind") == "ratio_vs_pycos" else []
    return [(t["vs"][0], t["threshold"]) for t in targets
            if t.get("vs") and t["vs"][1] == workload and t["field"] == (field or "value")]


def plot(results, out_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = results["ratios"]
    rows = plot_rows(results)
    anchors = [a for a in results["systems"] if a != "dispycos" and any(a in ratios[k] for k, _ in rows)]
    if not anchors or not rows:
        raise SystemExit("nothing to plot: no anchor results")
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 5.5))
    width = 0.8 / len(anchors)
    colors = {"pycos": "#1f77b4", "dask": "#ff7f0e", "mp": "#2ca02c"}
    for i, a in enumerate(anchors):
        xs, ys = [], []
        for j, (key, _) in enumerate(rows):
            r = ratios[key].get(a)
            if r is not None:
                xs.append(j + (i - (len(anchors) - 1) / 2) * width)
                ys.append(r)
        ax.bar(xs, ys, width, label="vs %s" % a, color=colors.get(a))
        for x, y in zip(xs, ys):
            ax.annotate("%.2g" % y, (x, y), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    for j, (key, _) in enumerate(rows):
        for a, threshold in target_lines(results, key):
            if a in anchors:
                i = anchors.index(a)
                x = j + (i - (len(anchors) - 1) / 2) * width
                ax.plot([x - width / 2, x + width / 2], [threshold, threshold], color="red", linestyle="--",
                        linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for _, label in rows], fontsize=7)
    ax.set_ylabel("dispycos advantage (ratio, > 1: dispycos better; log scale)")
    ax.set_title("dispycos vs anchors, medians of %d trials (%s)\nred dashes: target ratio over the anchor's bar"
                 % (results["config"]["trials"], results["machine"]["summary"]), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
