"""Built-in models, one module each, registered with ``@MODELS.register("name")`` on the spec class (found
without importing torch or diffusers). Look one up with :func:`benchmark.api.model.get_model_spec`."""
