"""Ray Data callables and the pure functions under them, grouped by the job they serve:
shards/ (read, decode, prepare, write, commit), embed/, everything/, dataset/ (read-back,
export, pictures), runtime/ (device, model loading, batch sizing), and config.py (the config
sections every operator takes)."""
