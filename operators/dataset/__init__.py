"""Reading a written dataset back: mask rows, exports (COCO, SA-1B JSON) and pictures."""
