"""The published evaluation protocols as pure functions: mask IoU and size buckets, RITM click
simulation, proposal recall with pycocotools, and the report (Markdown table, PNG chart)."""
