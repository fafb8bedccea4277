"""Integrations with other libraries: Hugging Face models and `transformers.Trainer` (`hf`),
Lightning (`lightning`). Each module imports its library when it is imported itself."""
