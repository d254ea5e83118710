"""Personas for bench/learning.py that no test and no default is tuned to."""
