"""Serving side: the development model server, the model puller and the client (docs/serving.md)."""
