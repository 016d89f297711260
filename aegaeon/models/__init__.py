"""Model definitions written over arena views (the Llama family)."""
