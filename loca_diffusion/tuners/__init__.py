"""PEFT tuners defined by this package (one sub-package per method, laid out like ``peft.tuners``)."""
