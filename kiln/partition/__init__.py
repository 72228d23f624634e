from kiln.partition.blocks import NodeRow, PartitionResult, partition

__all__ = ["NodeRow", "PartitionResult", "partition"]
