// Formats module.
