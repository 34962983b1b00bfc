"""Datasets: TOFU (bundled or from the hub), any QA file, plain-text corpora; prompt formats and collators."""
