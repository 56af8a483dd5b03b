"""The dataset stage (VOC, COCO, synthetic), the manifest and image augmentation."""
