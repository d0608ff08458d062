"""Everything mode: the point-grid generator (SAM family), FastSAM's one-pass mode, their
geometry, NMS and RLE, and the auto-labeling actor."""
