"""Benchmarks of UniMed against the single-task models it replaces (``python main.py benchmark``).

- :mod:`~benchmarks.speed`: one volume, every task, against MONAI Label's stock
  radiology segmentation pipeline (time and peak memory).
- :mod:`~benchmarks.server_load`: ``/infer`` latency of a real server under concurrent clients.
- :mod:`~benchmarks.training`: training throughput on the same patches.
- :mod:`~benchmarks.peers`: single-task peers trained on the same data and budget, scored by
  :func:`unimed.evaluation.evaluate`.
- :mod:`~benchmarks.report`: the JSON file, the Markdown tables and the plot.
"""
