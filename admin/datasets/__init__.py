"""Training sets from stored exchanges and the seed files: build (chat examples in build.py,
preference pairs in build_pairs.py from pairs.py), validate (preference_check.py for pairs),
stats, manifests and atomic writes (the PII scrub they apply is chatapp/pii.py, shared with
reviews' corrections); overlap.py finds training text that nearly duplicates an evaluation
question."""
