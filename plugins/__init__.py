"""Graph fusion patterns (one folder per fusion) and their TensorRT plugin mappings, applied by svc-deploy."""
