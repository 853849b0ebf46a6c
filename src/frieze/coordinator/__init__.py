"""frieze.coordinator: workflows, vault, mover, catalog, agent registry, policies."""
