"""Control plane: CLI, configuration, storage interface. Never imports torch, decord or transformers."""
