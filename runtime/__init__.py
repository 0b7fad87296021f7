"""slatune runtime."""
