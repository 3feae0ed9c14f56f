"""Matting jobs: photos and footage through one pipeline.

* :mod:`.job` — :func:`matte`, the job: checks, model, pipeline, report.
* :mod:`.options` — :class:`MatteOptions`, one options value; what applies where.
* :mod:`.pipeline` — the thread pipeline (source → predict → sink), bounded.
* :mod:`.photos` — photo pairs as a source, image files as a sink.
* :mod:`.cluster` — the job on a Ray cluster (:class:`ClusterOptions`), and
  :class:`MatteBatches` for Ray Data pipelines.
* :mod:`.footage` — video files, image sequences and live streams as a source, videos and
  PNG sequences as a sink; :func:`iter_mattes` for live use.
* :mod:`.video_io` — PyAV decoding/encoding; :mod:`.align` — background alignment;
  :mod:`.render` — one meaning per output kind.
"""

from __future__ import annotations

from .cluster import ClusterOptions, MatteBatches
from .footage import MattedFrame, iter_mattes
from .job import MatteReport, ServerOptions, check_matte_paths, matte
from .options import OUTPUT_KINDS, MatteOptions, parse_formats
from .photos import PairResult, find_pairs

__all__ = ["OUTPUT_KINDS", "ClusterOptions", "MatteBatches", "MatteOptions", "MatteReport", "MattedFrame", "PairResult",
           "ServerOptions", "check_matte_paths", "find_pairs", "iter_mattes", "matte", "parse_formats"]
