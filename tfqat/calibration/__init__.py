"""Setting activation ranges from data without training (minmax, percentile, entropy)."""
