"""The coordinator's workflows, one module per flow: backup, restore, recover."""
