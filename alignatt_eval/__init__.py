"""Evaluation: synthetic dev talks, the SimulEval dev-set runner, OmniSTEval scoring, plots and results."""
