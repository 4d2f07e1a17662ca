"""crossenc's additions to vLLM's entrypoints."""
