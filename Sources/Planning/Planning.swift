// Planning module.
