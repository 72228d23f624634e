from kiln.report.partition_report import PartitionReport

__all__ = ["PartitionReport"]
