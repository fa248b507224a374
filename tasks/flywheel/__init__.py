"""The flywheel's turn bookkeeping: early end when nothing is new, resume after a failure."""
