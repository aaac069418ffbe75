"""The Gradio web app: instruction-based image edits served from LoCA adapters.

Run ``python app/app.py`` (or ``python -m app``, ``make demo``); ``--help`` lists the options. The model
side (:mod:`app.engine`) works without the UI, for tests and benchmarks.
"""
