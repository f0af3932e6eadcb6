"""Engines run the featurizer stages over a folder: in this process, or on a Ray cluster."""
