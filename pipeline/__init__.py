"""Persona-based dialogue generation: the library behind the DVC stages.

Nothing here does work at import time; stages in ``stages/`` call into it.
"""
