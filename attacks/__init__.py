"""Attacks, one module each. The registry reads this folder (``@ATTACKS.register`` found with :mod:`ast`)
and imports a module when its attack is first used, so importing this package imports none of them."""
