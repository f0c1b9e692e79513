"""seedproxy: a caching reverse proxy for the OpenAI API with seed policy and drift reports."""

__version__ = "0.1.0"
