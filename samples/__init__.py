"""Sample exports: the real all-MiniLM-L6-v2 with task heads (NLP pipelines) and tiny models built in code."""
