"""One router per resource group; handlers are thin calls into frieze.coordinator."""
