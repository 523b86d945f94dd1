"""Adapters to outside APIs (Spark, ...). Each module imports its framework lazily: install the extra it names."""
