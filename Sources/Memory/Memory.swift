// Memory module.
