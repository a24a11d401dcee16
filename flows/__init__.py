"""coorch.flows: see DESIGN.md, \"Layers\"."""
