"""What goes in: the sample table, the built-in demo and the synthetic generator."""
