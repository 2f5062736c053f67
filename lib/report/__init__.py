"""Turning measurements into what a reader sees.

* :mod:`~lib.report.stats`: intervals at the right unit of replication, Holm, formatting;
* :mod:`~lib.report.claims`: each paper claim's computed verdict, glued into the text;
* :mod:`~lib.report.plots`: the book's figures;
* :mod:`~lib.report.notebook`: the set-up every chapter runs first (Jupyter, Colab).
"""
