"""Task heads on the shared encoder, one subpackage per task; tasks never import each other."""
