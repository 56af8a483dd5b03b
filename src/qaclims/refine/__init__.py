"""CAM refinement: CRF seeds, IRN and the random-walk pseudo masks (workflow/rules/irn.smk)."""
