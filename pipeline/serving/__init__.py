"""Serving: an HTTP API over a head file, a SavedModel export or a .tflite export."""
