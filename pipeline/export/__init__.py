"""Export: a head and its backbone as one SavedModel or .tflite file, with a JSON description."""
