"""Named run configs: every ``*.yaml`` / ``*.toml`` file in this folder is a suite named after it (its
``description`` key is what ``benchmark list suites`` shows)."""
