"""shoelib: the helper package behind the notebooks (catalogue -> dataset -> LoRA -> synthetic images)."""

from shoelib import quiet

quiet.install()
