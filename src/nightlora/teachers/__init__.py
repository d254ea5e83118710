"""Distillation (B3.4): a stronger teacher writes the replies the assistant should have given.

base.py holds the contract a teacher kind fulfils; each kind is a folder with its config
section and its teacher (registry.py lists them).  The rest is shared by every kind:
which prompts to ask (select.py), what leaves the machine (request.py, redact.py), asking
with caps, retries and back-off (ask.py), the cache of replies (cache.py), and the whole
stage over an export folder (distill.py).
"""
