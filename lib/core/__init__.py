"""What every part of the book stands on.

* :mod:`~lib.core.io`: files written atomically (temp file, then rename), half-precision weights;
* :mod:`~lib.core.datafiles`, :mod:`~lib.core.data`: Fashion-MNIST (and a synthetic stand-in) as tensors;
* :mod:`~lib.core.models`: the zoo architectures (timm parts), ``build`` and the attention path switch;
* :mod:`~lib.core.residual`: a model as its residual units, recomposing ``model(x)`` exactly;
* :mod:`~lib.core.metrics`: accuracy, NLL (also per image) and temperature scaling;
* :mod:`~lib.core.running`: one way to run a model for an analysis (device, mode, progress, hooks, checks).
"""
