"""frieze.host: what runs on a host below the agent: app plug-ins, snapshot providers, the freeze
guardian, data taps. Nothing here talks to the coordinator."""
