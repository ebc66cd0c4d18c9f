"""Real-framework scenarios for the alert rules (used by the tests here and by benchmarks/scenarios.py)."""
