"""Lab hosts: network namespaces on a private bridge, and the links on their paths."""
