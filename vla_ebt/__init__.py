"""vla_ebt: vision-language-action policies with an Energy-Based Transformer action head."""

__version__ = "0.1.0"
