"""Training sets from stored exchanges and the seed files: build (chat examples in build.py,
preference pairs in build_pairs.py from pairs.py), validate (preference_check.py for pairs),
stats, PII scrub, manifests and atomic writes; overlap.py finds training text that nearly
duplicates an evaluation question."""
