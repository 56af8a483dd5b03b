"""The Snakemake report's figures and tables, and the run summary (workflow/rules/report.smk)."""
