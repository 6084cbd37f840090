"""Model definitions of the core: the shared encoder and the vision-language bridge."""
