"""Built-in judges, one module each, registered with ``@JUDGES.register("name")`` on the class (found without
importing onnxruntime or transformers). The interface is :mod:`benchmark.api.judge`."""
