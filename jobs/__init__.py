"""Ray entry points: thin drivers around ``hw4``."""
