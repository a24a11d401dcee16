"""coorch.deployments: see DESIGN.md, \"Layers\"."""
