"""Training sets from stored exchanges and the seed files: build, validate, stats, PII scrub,
manifests and atomic writes."""
