"""frieze.protocol: the agent protocol shared by the agent (server) and the coordinator (client).

- :mod:`~frieze.protocol.models`: request/answer bodies, the Task (pydantic)
- :mod:`~frieze.protocol.client`: ``AgentClient`` (httpx over mutual TLS, one method per call, ``wait``)
- :mod:`~frieze.protocol.remote`: ``RemoteAgent``, the coordinator's agent port over the client
- :mod:`~frieze.protocol.ca`: the small CA, CSRs, mutual-TLS ``SSLContext`` builders
- :mod:`~frieze.protocol.enroll`: the coordinator-side enrollment handler (one-time tokens)
- :mod:`~frieze.protocol.errors`, :mod:`~frieze.protocol.http`: error mapping both ways

See docs/design/agent-protocol.md."""
