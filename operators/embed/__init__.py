"""The embedding job's actor."""
