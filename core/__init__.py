"""Genre Lab engine: audio I/O, features, datasets, models, training, evaluation.

Never imports Streamlit; every capability is reachable from ``python -m core``.
"""

__version__ = "0.1.0"
