"""A corpus of bad inputs for every command, built at test time by :mod:`.make`."""
