"""The device runtime shared by every model actor: device choice, model loading, autocast and
the encoder batch that fits the device."""
