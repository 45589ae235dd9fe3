"""base: what every layer stands on — the state root, the resources journal, system calls,
errors, units, fault injection and provenance. Imports nothing else of cowlab."""
