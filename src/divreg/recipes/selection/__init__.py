"""Data selection by importance resampling (``divreg select``, DSIR: Xie et al. 2023, arXiv
2302.03169): pick from a raw corpus the examples whose hashed n-gram distribution matches a
target corpus (see :mod:`divreg.data.selection` for the method and its compatibility with the
reference package ``data-selection``).

Reads JSONL (also ``.jsonl.gz`` and ``.jsonl.zst``), plain text (one example per line) or a
``datasets`` folder, in pieces, streaming: each text is tokenized and hashed once, its bucket ids
kept on disk (~2 bytes per n-gram, in the run's staging folder) for the weights and the counts.
Memory: the models, and per raw example its weight and two lengths (~24 bytes). Writes, into a
temporary folder renamed to ``output_dir`` at the end: ``selected-00000.jsonl``... (the selected
examples' original lines), ``report.json`` (sizes, the KL reduction of the selection and of random
selections of the same size per target, weight quantiles, seconds per phase) and ``weights.png``.
"""

from .config import SelectConfig
from .run import run

__all__ = ["SelectConfig", "run"]
