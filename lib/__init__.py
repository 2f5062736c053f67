"""How ViTs Work: all the book's computation, in four packages that import downwards only.

* :mod:`lib.core`: data, the zoo architectures, their residual units, evaluation, atomic files;
* :mod:`lib.zoo`: training (recipe, loop, run state), the runner and the shipped checkpoints;
* :mod:`lib.analyses`: the experiments of the chapters (landscapes, Hessians, Fourier, ...);
* :mod:`lib.report`: statistics, computed verdicts, plots and the notebooks' set-up.

``zoo`` and ``analyses`` build on ``core`` and never on each other; ``report`` stands alone. The
chapters import each module from its package, e.g. ``from lib.analyses import hessian``.
"""
