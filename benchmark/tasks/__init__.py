"""Built-in tasks, one YAML file each (the file's stem is the task's name); the keys are documented in
:mod:`benchmark.api.task`. sd-mini's task files mirror the world's task data (``benchmark/mini_world/tasks.py``);
tests/test_registry.py holds them equal."""
