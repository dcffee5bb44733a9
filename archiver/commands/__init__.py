"""One module per command, named after it; none imports another."""
