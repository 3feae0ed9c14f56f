"""Serving: a Triton Inference Server around the predictor, its client, and model repositories.

* :mod:`.server` — ``bgm-deploy serve``: starts ``tritonserver`` (from PyTriton's wheel) on a
  model repository, guards it, restarts it by rule, stops it gracefully.
* :mod:`.repository` — Triton model repositories (``config.pbtxt`` + model files) of both
  flavours (our Python-backend model, Triton's onnxruntime backend).
* :mod:`.triton_model` — the Python-backend model that runs a
  :class:`~bgm_deploy.predictor.Predictor` inside Triton (copied into repositories).
* :mod:`.client` — :class:`~bgm_deploy.serve.client.TritonMatteClient`, a drop-in predictor
  for ``matte --server``.
* :mod:`.guard` — the request guard ``serve`` puts in front of Triton's HTTP port (bounds
  every inference request's declared size before Triton allocates it).
* :mod:`.kubernetes` — Deployment, Service, HPA and KServe manifests for a repository
  (``export --format triton --k8s DIR``).
"""
