"""clapray: CLAP4CLIP continual learning runs and Ray-distributed sweeps.

The core (``clapray.config``, ``clapray.data``, ``clapray.model``, ``clapray.metrics``) imports neither
Ray nor Optuna, so a run is a plain Python object usable from a script, a test or a Ray worker.
"""

__version__ = "0.1.0"
