"""The baseline CAM: train_cam, make_cam, eval_cam (rules in workflow/rules/cam.smk)."""
