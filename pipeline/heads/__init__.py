"""Heads: scikit-learn estimators trained on stored features, their calibration and selection, the data-only head file, and the Classifier that pairs a head with its feature spec."""
