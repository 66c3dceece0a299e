"""Ray-free core of the background-removal service: tiers, weights, model runtimes, codecs and effects."""

import os

# transparent-background imports albumentations, which asks PyPI for a newer version at import unless told not to:
# a service (and an offline machine) must not reach the network when it starts.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
