from tests.config.families import config_dirs  # noqa: F401  (a fixture, shared by the modules here)
