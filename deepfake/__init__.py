"""Real-vs-generated image detection: data, models, attacks, two-phase training, evaluation, ensemble."""
import os

# albumentations checks PyPI for updates at import; offline that is a delay and a warning for nothing.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
