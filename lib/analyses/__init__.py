"""The experiments: each module measures one property of a trained model (never trains one).

* :mod:`~lib.analyses.directions`, :mod:`~lib.analyses.landscape`: loss landscapes (chapter 2);
* :mod:`~lib.analyses.krylov`, :mod:`~lib.analyses.hessian`: Hessian spectra (chapters 2, 3, 6);
* :mod:`~lib.analyses.fourier`: which frequencies the units keep (chapters 4, 6);
* :mod:`~lib.analyses.filters`, :mod:`~lib.analyses.corruptions`, :mod:`~lib.analyses.robustness`:
  band-limited noise, low-pass filtering and common corruptions, and a model's accuracy under them
  (chapters 4, 6);
* :mod:`~lib.analyses.unit_effects`: what each residual unit does to its stream: feature-map
  variance, lesions, skip-connection ratios (chapters 4–7);
* :mod:`~lib.analyses.alternet`: AlterNet's build rule (chapter 6);
* :mod:`~lib.analyses.summary`: parameters, FLOPs and unit tables (chapter 1);
* :mod:`~lib.analyses.similarity`, :mod:`~lib.analyses.localisation`: CKA between units and
  models, CKA of tokens against input patches (chapter 7);
* :mod:`~lib.analyses.attention`: attention maps, distances and rollout (chapter 8);
* :mod:`~lib.analyses.head_importance`: masking, scoring and pruning heads (chapter 8);
* :mod:`~lib.analyses.attention_patterns`: the vocabulary of attention patterns (chapter 8);
* :mod:`~lib.analyses.featurevis`: feature visualisation and position probes (chapter 9).
"""
