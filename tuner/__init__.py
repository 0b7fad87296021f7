"""slatune tuner."""
