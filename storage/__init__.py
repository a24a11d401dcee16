"""coorch.storage: the campaign store (DESIGN.md, "Store and provenance").

A campaign is one zarr v3 group at a local path or any fsspec URL; see ``docs/storage.md``.
Layer rule: nothing here imports Prefect, torch or the other coorch layers.
"""

from .store import CampaignStore, code_version

__all__ = ["CampaignStore", "code_version"]
