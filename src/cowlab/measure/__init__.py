"""measure: the workloads (one module per question the slides ask), engine mode through a
private dockerd, the probes that take readings, and the conformance oracle."""
