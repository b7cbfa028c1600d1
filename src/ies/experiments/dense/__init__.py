"""The engine for dense prediction: semantic segmentation and object detection.

``synthetic`` (shapes with exact masks and boxes), ``voc`` (PASCAL VOC readers), ``models``
(a DeepLab-style segmenter and a CenterNet-style detector, plain torch), ``metrics`` (mIoU from a
confusion matrix, mAP through pycocotools) and ``tasks`` (the per-sample losses and evaluation
the engine calls for each task, and the datasets that imply them).
"""

__all__: list = []
