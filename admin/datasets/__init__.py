"""Training sets from stored exchanges and the seed files: build, validate, stats, manifests and
atomic writes (the PII scrub they apply is chatapp/pii.py, shared with reviews' corrections)."""
