"""The offline demo: a generated corpus (``corpus``, ``synth``) run through every stage (``run``)."""
