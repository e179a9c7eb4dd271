"""Training backends behind one Trainer protocol (see base.py)."""
