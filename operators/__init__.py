"""Ray Data callables and the pure functions under them (read, decode, preprocess, embed, write)."""
