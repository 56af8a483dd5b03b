"""The glue between Snakemake and the library: job context, launcher, parse-time checks, code
digests.
"""
