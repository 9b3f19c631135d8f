"""A report over finished (or running) runs: report.md, report.html and PNG plots (matplotlib, no display needed).

Per run folder it reads summary.json, run.json, round_K/manifest.json, round_K/eval.json and round_K/embeddings.npy.
  * each metric (train loss, every eval metric) against the number of training rows; runs with the same selector
    form one line: the mean over their seeds, with a min-max band
  * diversity of each round's subset, in one embedding space per run (the first round that saved embeddings, i.e.
    the base model + the seed round's adapter, shared by selectors that share a seed):
      vendi          Vendi score with a cosine kernel: exp(entropy of the eigenvalues of K/k), 1..k
      nn_distance    mean Euclidean distance from each selected row to its nearest other selected row
      coverage       coverage radius: the largest distance from any pool row to its nearest selected row
    (Euclidean on the raw embeddings, the distance k-center minimises)
  * the pool's embedding map: PCA to 2-D of the last saved embeddings, selected rows coloured by the round they
    entered
  * stage timings per round as stacked bars
The markdown and HTML tables carry the numbers behind every plot.
"""

from .build import DIVERSITY, write_report
from .metrics import coverage_radius, diversity, mean_nn_distance, nearest_distances, pca_2d, vendi_score
from .plots import DPI, FIG_SIZE, figure, group_series, plot_embedding_map, plot_timings, plot_vs_rows, save_png
from .runs import LABEL_KINDS, STAGES, Run, label_coverage, load_run, pool_labels

__all__ = [
    "DIVERSITY",
    "DPI",
    "FIG_SIZE",
    "LABEL_KINDS",
    "STAGES",
    "Run",
    "coverage_radius",
    "diversity",
    "figure",
    "group_series",
    "label_coverage",
    "load_run",
    "mean_nn_distance",
    "nearest_distances",
    "pca_2d",
    "plot_embedding_map",
    "plot_timings",
    "plot_vs_rows",
    "pool_labels",
    "save_png",
    "vendi_score",
    "write_report",
]
