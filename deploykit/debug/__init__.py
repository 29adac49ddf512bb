"""Which layer broke it: per-layer numerical debugging of a candidate model against its reference.

match.py pairs the tensors of the two graphs (names kept by the rewrites, QDQ-aware, op type and
position where names differ); metrics.py holds the streaming error statistics; run.py runs both
graphs in chunks of layers on their targets and measures each layer's accumulated error and the
error it introduces by itself; fix.py closes the loop (the smallest set of layers kept in float
that reaches a goal, built with the recipe steps' `exclude`); render.py draws the table and HTML.
"""
