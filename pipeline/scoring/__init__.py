"""Scoring: a folder or a store through a Classifier into a CSV, evaluation on a labelled store, and the network's own ImageNet classes."""
