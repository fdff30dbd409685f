"""Health: checks and the weighted score, monitoring, synthetic transactions, viewpoints."""
