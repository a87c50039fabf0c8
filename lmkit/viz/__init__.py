"""Plotly figure builders for the notebooks, one submodule per lesson.

Every function builds a ``plotly.graph_objects.Figure`` and RETURNS it; none displays it (no
``fig.show()``), so a notebook cell shows the figure by ending with it and a script writes it with
``to_html`` or ``to_png``. ``from lmkit import viz; viz.head_view(...)`` reaches them all:

- ``common``: the palette, ``style`` (one look for every figure) and the input checks;
- ``data``: notebook 01_data; ``attention``: 02_attention; ``training``: 03_training;
  ``finetune``: 04_finetuning; ``evaluate``: 05_evaluation; ``scaling``: 06_scaling;
- ``export``: ``to_html`` (one self-contained page), ``to_png`` (kaleido, the system's Chromium).
"""

from .attention import (
    AUTO_DOWNSAMPLE_TOKENS,
    HEAD_VIEW_MAX_TOKENS,
    MAX_CELLS,
    attention_evolution,
    attention_explorer_figure,
    attention_heatmap,
    attention_overview,
    head_scores_heatmap,
    head_view,
    matrix_grid,
    model_view,
    rollout_comparison,
)
from .common import COLORWAY, FONT_SIZE, PALETTE, PRESENTATION_FONT_SIZE, SEQUENTIAL, style
from .data import (
    cleaning_report,
    corpus_overview,
    similarity_heatmap,
    split_overview,
    tokenizer_comparison,
    zipf_plot,
)
from .evaluate import reliability_diagram, robustness_plot, run_comparison
from .export import to_html, to_png
from .finetune import confusion_matrices, method_comparison, metric_curves, retrieval_matrix
from .scaling import memory_growth_plot, scaling_plot
from .training import HEALTHY_UPDATE_RATIO, loss_curves, lr_schedule, training_diagnostics

__all__ = [
    "PALETTE", "COLORWAY", "SEQUENTIAL", "FONT_SIZE", "PRESENTATION_FONT_SIZE", "style",
    "corpus_overview", "cleaning_report", "similarity_heatmap", "split_overview", "tokenizer_comparison", "zipf_plot",
    "AUTO_DOWNSAMPLE_TOKENS", "MAX_CELLS", "HEAD_VIEW_MAX_TOKENS", "attention_heatmap", "attention_overview",
    "model_view", "head_view", "attention_explorer_figure", "rollout_comparison", "head_scores_heatmap",
    "attention_evolution", "matrix_grid",
    "lr_schedule", "loss_curves", "HEALTHY_UPDATE_RATIO", "training_diagnostics",
    "metric_curves", "method_comparison", "confusion_matrices", "retrieval_matrix",
    "reliability_diagram", "robustness_plot", "run_comparison",
    "scaling_plot", "memory_growth_plot", "to_html", "to_png",
]
