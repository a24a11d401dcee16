"""coorch.instrument_agents: see DESIGN.md, \"Layers\"."""
