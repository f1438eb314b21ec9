"""Modelseek: find the generative models whose samples match a text, an image or a sketch."""

__version__ = "0.1.0"
