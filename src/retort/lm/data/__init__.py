"""Training data: tokenised examples, collators (labels -100 on prompt and padding), the trace format."""
