"""`nightlora doctor`: the installation and configuration checked end to end (checks.py)."""
