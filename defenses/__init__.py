"""Defenses, one module each. The registry reads this folder (``@DEFENSES.register`` found with :mod:`ast`)
and imports a module when its defense is first used, so importing this package imports none of them (and
``python -m defenses.saferedir_train`` runs the training module once, not also as a dependency)."""
