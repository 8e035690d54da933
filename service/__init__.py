"""chat-service: streams AI chat replies over Server-Sent Events."""

__version__ = "0.1.0"
