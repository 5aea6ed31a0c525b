"""One module per op: implementations, input makers, floors, sweeps."""
