"""coorch.tasks: see DESIGN.md, \"Layers\"."""
