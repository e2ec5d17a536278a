"""
Bar chart of the ratio table of a benchmarks/run.py JSON file (ratios > 1:
dispycos is better). Needs matplotlib; run.py calls it with whichever
interpreter (this repository's venv or the anchors venv) has it.

    python benchmarks/plot.py results.json ratios.png
"""

import json
import sys


def plot(results, out_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = results["ratios"]
    anchors = [a for a in results["systems"] if a != "dispycos" and any(a in ratios.get(w, {}) for w in ratios)]
    workloads = [w for w in results["workloads"] if ratios.get(w)]
    if not anchors or not workloads:
        raise SystemExit("nothing to plot: no anchor results")
    labels = {w: "%s\n%s" % (w, results["workload_info"][w]["metric"]) for w in workloads}
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(workloads)), 5.5))
    width = 0.8 / len(anchors)
    colors = {"pycos": "#1f77b4", "dask": "#ff7f0e", "mp": "#2ca02c"}
    for i, a in enumerate(anchors):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            r = ratios[w].get(a)
            if r is not None:
                xs.append(j + (i - (len(anchors) - 1) / 2) * width)
                ys.append(r)
        bars = ax.bar(xs, ys, width, label="vs %s" % a, color=colors.get(a))
        for x, y in zip(xs, ys):
            ax.annotate("%.2g" % y, (x, y), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    for j, w in enumerate(workloads):
        t = results["targets"].get(w)
        if t and t.get("kind") == "ratio_vs_pycos":
            ax.plot([j - 0.45, j + 0.45], [t["threshold"], t["threshold"]], color="red", linestyle="--", linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([labels[w] for w in workloads], fontsize=8)
    ax.set_ylabel("dispycos advantage (ratio, > 1: dispycos better; log scale)")
    ax.set_title("dispycos vs anchors, medians of %d trials (%s)\nred dashes: target vs pycos"
                 % (results["config"]["trials"], results["machine"]["summary"]), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
