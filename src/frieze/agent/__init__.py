"""frieze.agent: the per-host daemon (mTLS HTTPS, task API). See docs/design/agent-protocol.md."""
