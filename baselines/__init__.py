"""Models COOKIE is compared with: a CLIP-style dual encoder and a single-stream cross-encoder."""
