"""The stages of `qconvert export` and `qconvert validate` (and the protocol in base.py): one small class
per step.

A stage reads and sets fields of the run's context (context.py) and never imports another stage;
`pipeline/exporting.py` (EXPORT) and `pipeline/validating.py` (VALIDATE) alone know their order.
"""
