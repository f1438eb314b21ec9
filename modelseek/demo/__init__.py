"""The built-in demo zoo: real models and images that installed packages ship, used offline."""
