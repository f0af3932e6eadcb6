"""Decoding image files into pixels: Pillow for training, scoring and serving, and the same decode and resize as TensorFlow ops for exports."""
