"""Policy evaluation of a deployment on the evaluation questions, simulated travellers, and the
comparison of two arms' adherence (the gate `ab promote` applies)."""
