"""normbench."""
