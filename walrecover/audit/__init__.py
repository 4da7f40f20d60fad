"""The audit: every applied change with its outcome, typed, hash-chained and sealed in Parquet;
read back and verified.
"""
