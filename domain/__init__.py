"""slatune's domain: the fleet spec and the rules every package shares (knobs, bounds, SLAs, the
one proposal path, window maths). Pure: nothing here talks to Triton, the store or the network."""
