"""frieze.journal: continuous data protection journal (not built yet)."""
