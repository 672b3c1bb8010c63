"""Conversion of robot datasets (OXE RLDS, sim demos) to webdataset shards; see
:mod:`data_pipelines.convert` (CLI), :mod:`data_pipelines.rlds` (reader without TensorFlow) and
:mod:`data_pipelines.shards` (shard schema and writer)."""
