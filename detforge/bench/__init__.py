"""Benchmarks behind `detforge bench`: latency percentiles, training and data throughput."""
