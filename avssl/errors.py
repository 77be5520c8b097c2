"""The error a user's recipe raises, in a module of its own so that every layer (data,
tasks, evaluation) can raise it without importing the recipe schema."""
from __future__ import annotations


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message names the key or file."""
