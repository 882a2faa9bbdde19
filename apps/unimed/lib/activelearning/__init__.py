"""Active learning in the UniMed app: scoring, strategies and label-triggered retraining."""
