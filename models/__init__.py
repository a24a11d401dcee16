"""coorch.models: see DESIGN.md, \"Layers\"."""
