"""Training heads: model selection (the C path, feature sets x kinds x C), the estimator, `train`, multi-label, evaluation and suspects."""
