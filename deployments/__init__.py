"""Ray Serve wiring: the HTTP ingress, the tier deployment and the application builder. No image math here."""
