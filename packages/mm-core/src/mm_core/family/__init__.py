"""What model families share, so a family package holds only what is its own: HF config reading,
the Qwen2-style text decoder, the stage model's routing and lazy plugin registration."""
