"""Evaluation: simulated benchmark suites, demonstration collection and closed-loop rollouts."""
