"""Requests in, records out: the record file, run identity, grids, the one runner and its workers."""
