"""Reading and writing shards: finding them, reading tar/folder samples, decoding, the CPU
preparation step, the declared rows and tables, Parquet parts and commit markers."""
