"""Ray-free core of the background-removal service: tiers, weights, model runtimes, codecs and effects."""
