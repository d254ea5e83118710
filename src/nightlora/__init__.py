"""nightlora: the nightly job that teaches a local assistant from its user's feedback."""

__version__ = "0.1.0"
