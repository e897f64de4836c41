"""The stages of `qconvert export` (and the protocol in base.py): one small class per step.

A stage reads and sets fields of the run's context (context.py) and never imports another stage;
`pipeline/exporting.py` alone knows their order.
"""
