"""The model zoo: how its models are trained and how its checkpoints are kept and loaded.

* :mod:`~lib.zoo.recipe`: the one training recipe, its schedule and command-line flags;
* :mod:`~lib.zoo.runstate`, :mod:`~lib.zoo.trajectory`: a run's resume state and weight trajectory;
* :mod:`~lib.zoo.train`: training one model (``python -m lib.zoo.train``);
* :mod:`~lib.zoo.catalog`: the zoo's entries, sets and manifests;
* :mod:`~lib.zoo.runner`: the restartable run of the whole zoo, staged;
* :mod:`~lib.zoo.checkpoints`: loading a shipped checkpoint, verified;
* ``python -m lib.zoo``: the command line (list, verify, train, progress, swap, register).
"""
