"""Conversion of robot datasets (OXE RLDS, LeRobotDataset v2 folders, robomimic-style HDF5 and npz
demos, sim demos) to webdataset shards; see :mod:`data_pipelines.convert` (CLI),
:mod:`data_pipelines.rlds` (reader without TensorFlow), :mod:`data_pipelines.lerobot`,
:mod:`data_pipelines.hdf5_npz` (readers), :mod:`data_pipelines.sources` (key mapping shared by
those readers) and :mod:`data_pipelines.shards` (shard schema and writer)."""
