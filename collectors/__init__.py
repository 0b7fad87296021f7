"""slatune collectors."""
