"""joulebench: measure what Green-AI techniques buy, in accuracy and joules."""
