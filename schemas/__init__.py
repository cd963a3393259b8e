"""Per-model-class export schemas (nemo2riva's three-list YAML format); loaded by servicemaker.schema."""
