"""coorch: co-orchestration of characterisation instruments over combinatorial libraries."""

__version__ = "0.1.0"
