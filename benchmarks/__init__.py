"""Benchmark harness of bgm-deploy: timing (``harness``), statistics (``stats``), reports
(``report``), FLOP counting and the GEMM peak (``flops``), backends (``backends``), and the
committed scripts that produced the published numbers (``run_published``, ``profile_onnx``).
The CLI is ``bgm-deploy bench``; the API is :func:`bgm_deploy.bench.bench`.
"""
