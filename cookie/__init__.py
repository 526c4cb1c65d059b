"""COOKIE: dual-stream encoders with a weight-sharing transformer and three contrastive losses."""
