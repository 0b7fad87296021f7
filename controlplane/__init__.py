"""slatune controlplane."""
