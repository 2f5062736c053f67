"""The experiments: each module measures one property of a trained model (never trains one).

* :mod:`~lib.analyses.directions`, :mod:`~lib.analyses.landscape`: loss landscapes (chapter 2);
* :mod:`~lib.analyses.krylov`, :mod:`~lib.analyses.hessian`: Hessian spectra (chapters 2, 3, 6);
* :mod:`~lib.analyses.fourier`, :mod:`~lib.analyses.perturbations`: frequency behaviour (chapters 4, 6);
* :mod:`~lib.analyses.features`: feature-map variance and lesions (chapters 4–6);
* :mod:`~lib.analyses.alternet`: AlterNet's build rule (chapter 6);
* :mod:`~lib.analyses.summary`: parameters, FLOPs and unit tables (chapter 1);
* :mod:`~lib.analyses.similarity`: CKA, skip connections, localisation (chapter 7);
* :mod:`~lib.analyses.attention`: attention distances, head importance, patterns (chapter 8);
* :mod:`~lib.analyses.featurevis`: feature visualisation and position probes (chapter 9).
"""
