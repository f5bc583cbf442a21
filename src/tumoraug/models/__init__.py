"""Neural networks of both stages; each file reads top to bottom, its config in tumoraug.config."""
